"""The ONNX file CrypTen's own importer reads: ``save_onnx(gm, "m.onnx", target="crypten", seq_len=32)``.

    aero-compile gpt2-tiny --passes all --emit onnx --onnx-for crypten -o m.onnx

The ONNX backend (``targets/onnx``) exports and verifies; this folder holds what only CrypTen needs:
``graph`` (the fx half: one-hot tokens, public values folded, weights as inputs, fixed shapes:
``export_for_crypten`` is the entry point), ``rewrite`` (the ONNX half: only the operators and forms
``crypten.nn.from_onnx`` reads), ``check`` (CrypTen imports the file and runs it in plaintext) and
``consumer.py`` (a stand-alone script that runs the file between two CrypTen parties, importing
torch and crypten only).
"""

from .graph import DEFAULT_SEQ_LEN, export_for_crypten

__all__ = ["DEFAULT_SEQ_LEN", "export_for_crypten"]
