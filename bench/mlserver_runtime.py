"""The custom Seldon MLServer runtime `make bench-peers` serves the benchmark's ONNX file with.

MLServer ships no ONNX runtime, so this ~20-line ``MLModel`` opens an onnxruntime session on the
file named by the model settings' ``parameters.uri`` and answers every request with the graph's
``score`` output, the same work aeguard's scorer does before its thresholds. It runs inside
MLServer's own virtual environment (``.venv-mlserver``), never imported by aeguard itself.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxScore(MLModel):
    """One onnxruntime session; ``predict`` returns the ``score`` output for the first input tensor."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # as aeguard's default
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (score,) = self._session.run(["score"], {self._input: x})
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("score", score)])
