"""`duquant bench serve`: latency/throughput of a DuQuant checkpoint vs its 16-bit model."""
