//! CUDA backend (cudarc, NVRTC) for Jetson and desktop GPUs.
