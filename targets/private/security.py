"""How secure a private run was, stated the same way by every engine: the ``security`` block and its warning.

    block = security_block(engine="crypten", provider="tfp", hosts="loopback")
    # {"tls": False, "provider_secure": False, "notes": ["provider tfp: ..."]}
    line = insecure_summary(block)   # one line for the terminal, or None when the run was secure

``hosts`` is where the parties ran: ``"loopback"`` (every party a process on this machine: no network
to protect, TLS not needed), ``"tls"`` (between hosts over mutual TLS, ``--tls``), or ``"insecure"``
(between hosts without it, ``--insecure-link``). ``provider`` is where the correlated randomness
(Beaver triples) comes from: CrypTen's ``--crypten-provider`` or SPU's protocol.
"""

from __future__ import annotations

from aero_compile.errors import AeroError

HOSTS = ("loopback", "tls", "insecure")

# (engine, provider) -> (secure against the other party?, what it means). CrypTen's tfp and SPU semi2k
# draw every triple in the first party's process (the model owner): it could open the client's shares.
PROVIDERS = {
    ("crypten", "tfp"): (False, "provider tfp: the model owner's process makes every triple, so it could open the "
                                "client's shares (use --crypten-provider ttp)"),
    ("crypten", "ttp"): (True, "provider ttp: a separate dealer makes the triples; secure unless it colludes "
                               "with a party"),
    ("spu", "semi2k"): (False, "SPU semi2k: triples from a trusted first party (SPU's default beaver), the model "
                               "owner's process, which could open the client's shares (use cheetah)"),
    ("spu", "cheetah"): (True, "SPU cheetah: products by HE, nonlinear ops by silent OT; no trusted party"),
    ("spu", "aby3"): (True, "SPU aby3: three parties, honest majority; the third party's role is not bound by "
                            "its certificate on SPU's links (see docs/security.md)"),
}


def security_block(*, engine: str, provider: str, hosts: str) -> dict:
    """``{"tls": bool, "provider_secure": bool, "notes": [...]}`` for a run of ``engine`` with ``provider``."""
    if hosts not in HOSTS:
        raise AeroError(f"internal: hosts must be one of {', '.join(HOSTS)}, got '{hosts}'")
    if (engine, provider) not in PROVIDERS:
        raise AeroError(f"internal: no security statement for {engine} provider '{provider}'")
    secure, provider_note = PROVIDERS[engine, provider]
    link_note = {
        "loopback": "parties on this machine over loopback: no link leaves it, no TLS",
        "tls": "mutual TLS on every link between the parties, each peer's certificate names its role",
        "insecure": "--insecure-link: links between hosts are plaintext and unauthenticated; anyone on the path "
                    "sees every message and anyone who reaches a port can take a party's place",
    }[hosts]
    return {"tls": hosts == "tls", "provider_secure": secure, "notes": [provider_note, link_note]}


def insecure_summary(block: dict) -> str | None:
    """One terminal line naming what made a run insecure, or None if nothing did."""
    reasons = []
    if not block["provider_secure"]:
        reasons.append(block["notes"][0])
    if any(note.startswith("--insecure-link") for note in block["notes"]):
        reasons.append("--insecure-link: links are plaintext and unauthenticated")
    return ("not secure: " + "; ".join(reasons)) if reasons else None


def link_mode(*, multihost: bool, tls: str | None, insecure_link: bool, loopback_tls: bool = False) -> str:
    """``hosts`` for ``security_block`` from the options; AeroError if a multi-host run has neither --tls nor
    --insecure-link. On one machine --insecure-link is refused (nothing leaves it) and --tls is accepted only
    where the engine can run its loopback links over TLS (``loopback_tls``: CrypTen, to measure its cost)."""
    if tls and insecure_link:
        raise AeroError("--tls and --insecure-link contradict each other: keep one")
    if not multihost:
        if insecure_link:
            raise AeroError("--insecure-link applies to runs between hosts (--party, --spu-party); a single-machine "
                            "run stays on loopback: drop it")
        if tls and not loopback_tls:
            raise AeroError("--tls on one machine is CrypTen's (to measure its cost); this engine takes it between "
                            "hosts only (--spu-party): drop it")
        return "tls" if tls else "loopback"
    if not tls and not insecure_link:
        raise AeroError("a run between hosts needs --tls DIR (make one with `aero-compile keys DIR`), "
                        "or --insecure-link to run without authentication or encryption")
    return "tls" if tls else "insecure"


def attach_security(measured: dict, block: dict) -> None:
    """Put ``block`` into every record of ``measured`` ({graph name: record}) that has none yet."""
    for record in measured.values():
        if isinstance(record, dict):
            record.setdefault("security", dict(block))


def announce_security(measured: dict, stream=None) -> None:
    """Print one line when the run was not secure (to ``stream``, default stdout); nothing otherwise."""
    import sys

    blocks = [record["security"] for record in measured.values() if isinstance(record, dict) and "security" in record]
    line = insecure_summary(blocks[0]) if blocks else None
    if line:
        print(line, file=stream or sys.stdout)
