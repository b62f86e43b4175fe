"""Deployment: ONNX export with a parity check, model cards, publishing on the Hugging Face hub.

* :func:`export_onnx` (``fgir export CKPT --format onnx``): the deployed model of a checkpoint,
  through its export form (:mod:`fgir.export.forms`; plug-ins declare one), with the metadata a
  predictor needs embedded in the file; ``fgir predict model.onnx IMAGES`` runs it.
* :func:`write_model_card`: the Hugging Face model card next to checkpoints and exports.
* :func:`push_to_hub` (``fgir push CKPT OWNER/NAME``) and ``model.name=hf-hub:OWNER/NAME``.

``onnx``/``onnxruntime``/``huggingface_hub`` are the ``export`` extra; they are imported on use.
"""

from .card import card_info, render_card, write_model_card, write_run_card
from .forms import ExportForm, export_form, register_export_form
from .hub import create_from_hub, hub_config, is_hub_name, push_to_hub, save_for_hub
from .onnx import ExportResult, ParityError, export_onnx, onnx_session, read_onnx_meta

__all__ = ["ExportForm", "ExportResult", "ParityError", "card_info", "create_from_hub", "export_form", "export_onnx",
           "hub_config", "is_hub_name", "onnx_session", "push_to_hub", "read_onnx_meta", "register_export_form",
           "render_card", "save_for_hub", "write_model_card", "write_run_card"]
