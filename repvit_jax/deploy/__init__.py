"""Deploying trained models outside JAX: TFLite and TF SavedModel export (`export`), the
post-conversion edits of TFLite graphs (`tflite_ops`) and the GELU form traced for them
(`gelu`). TensorFlow is imported only inside the export functions."""
