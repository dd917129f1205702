"""Child process for the crash test: append forever from several threads, print each ack.

``python -m tests.log.crash_child DB FIRST`` appends entries ``FIRST, FIRST+1, ...`` and prints
``<entry number> <log index>`` once each append has returned (i.e. is durable), until killed.
"""

from __future__ import annotations

import sys
import threading

from agent.logstore import LogStore
from tests.log.helpers import LOG_SIGNER, make_entry

THREADS = 8


def main(db: str, first: int) -> None:
    store = LogStore(db, LOG_SIGNER)
    out = threading.Lock()

    def work(k: int) -> None:
        i = first + k
        while True:
            entry, blobs = make_entry(i)
            receipt = store.append(entry, blobs)
            with out:
                sys.stdout.write(f"{i} {receipt.index}\n")
                sys.stdout.flush()
            i += THREADS

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
