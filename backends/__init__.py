"""Code generation per target: fused groups to kernel IR to LLVM IR or CUDA C."""
