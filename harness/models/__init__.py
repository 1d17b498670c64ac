"""Model sources (rfdetr, a user's ONNX file) and the one detection format they decode to."""
