"""Run a ``--onnx-for crypten`` file between two CrypTen parties, with CrypTen 0.4.1 as shipped.

A stand-alone script: it imports torch and crypten only (not aero_compile), so it shows what any
CrypTen user does with the file. The one fix CrypTen needs on current torch is the import alias below.

    python crypten_consumer.py m.onnx one_hot.pt logits.pt      # one_hot: [batch, sequence, vocab] floats

Party 0 (the model owner) encrypts the weights, party 1 (the client) the one-hot tokens; both load
the same file here (a real client would load one with the same architecture and zeroed weights:
only party 0's weights are used). Party 1 saves the revealed logits.
"""

import importlib
import sys


def alias_onnx_registration():
    """crypten imports torch.onnx._internal.registration, which torch 2.9+ moved; alias the old name."""
    old = "torch.onnx._internal.registration"
    try:
        importlib.import_module(old)
    except ModuleNotFoundError:
        sys.modules[old] = importlib.import_module("torch.onnx._internal.torchscript_exporter.registration")


OWNER, CLIENT = 0, 1


def party(model_path, one_hot_path, logits_path):
    import crypten
    import torch

    rank = crypten.communicator.get().get_rank()
    with open(model_path, "rb") as handle:
        model = crypten.nn.from_onnx(handle)
    model.encrypt(src=OWNER)
    one_hot = torch.load(one_hot_path)
    tokens = crypten.cryptensor(one_hot if rank == CLIENT else torch.zeros_like(one_hot), src=CLIENT)
    logits = model(tokens)
    # reveal() and an exact division: CrypTen 0.4.1's decode floor-divides negative values by the
    # wrong scale, so get_plain_text() returns some negative values 1.0 too low.
    plain = logits.reveal().double() / logits.encoder.scale
    if rank == CLIENT:
        torch.save(plain.float(), logits_path)


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[4].strip(), file=sys.stderr)
        return 2
    alias_onnx_registration()
    import crypten
    import crypten.mpc

    results = crypten.mpc.run_multiprocess(world_size=2)(party)(*argv)
    return 0 if results is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
