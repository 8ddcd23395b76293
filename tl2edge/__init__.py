"""tl2edge: from a folder of labelled images to a fast image classifier served over gRPC.

The core package (this folder) holds what every stage shares and imports neither
TensorFlow nor ONNX Runtime: the CLI, image decoding, the synthetic data generator,
the model bundle contract and the gRPC client.
"""

__version__ = "0.1.0"
