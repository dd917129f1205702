"""The key broker: nonce and key stores, appraisal service, key release, gRPC servicers."""
