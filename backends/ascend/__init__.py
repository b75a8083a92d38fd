"""The Ascend (CANN / torch_npu) backend: the adapter, and a CPU simulator of the torch_npu API it uses."""
