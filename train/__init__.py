"""Training stage: fine-tune Keras' VGG16 on an image folder (`tl2edge.train.fit.train`).

Importing this package is cheap; TensorFlow is imported by the modules that need it.
"""
