"""scoring: run ONNX models over big datasets on Ray.

Importing this package imports nothing heavy (no Ray, ONNX Runtime, PIL or s3fs); the stages
import what they need when they run.
"""

__version__ = "0.1.0"
