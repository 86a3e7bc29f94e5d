"""Post-training quantization: selective layout, torchao / bitsandbytes backends, ATM/OHB calibration, report."""
