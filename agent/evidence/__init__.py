"""Evidence collection inside the enclave: real hardware (NVML, configfs-tsm) or emulated."""
