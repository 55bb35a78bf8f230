"""`arvc convert self-forcing|lora|vae`: training checkpoints to the safetensors files arvc reads
(arvc/checkpoints/convert.py)."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    c = sub.add_parser("convert", help="turn training checkpoints into one model.safetensors")
    csub = c.add_subparsers(dest="kind", required=True)
    sf = csub.add_parser("self-forcing", help="Self-Forcing / CausVid .pt (generator_ema or generator)")
    sf.add_argument("input")
    sf.add_argument("--which", default="auto", choices=["auto", "generator_ema", "generator", "model"])
    sf.add_argument("-o", "--output", required=True)
    ll = csub.add_parser("lora", help="LongLive base + LoRA, merged in fp32")
    ll.add_argument("--base", required=True)
    ll.add_argument("--lora", required=True)
    ll.add_argument("--alpha", type=float, help="LoRA alpha when the file does not store it")
    ll.add_argument("--rank", type=int, help="expected LoRA rank (checked)")
    ll.add_argument("-o", "--output", required=True)
    va = csub.add_parser("vae", help="Wan2.1 VAE .pth (Wan2.1_VAE.pth) -> safetensors, encoder included")
    va.add_argument("input")
    va.add_argument("-o", "--output", required=True)
    for sp in (sf, ll):
        sp.add_argument("--num-heads", type=int, help="attention heads, only for non-Wan sizes (Wan: dim/128)")
    c.set_defaults(func=command)


def command(args) -> int:
    from arvc.checkpoints import convert

    if args.kind == "self-forcing":
        info = convert.convert_self_forcing(args.input, args.output, which=args.which, num_heads=args.num_heads)
    elif args.kind == "vae":
        info = convert.convert_vae(args.input, args.output)
    else:
        info = convert.merge_lora(args.base, args.lora, args.output, alpha=args.alpha, rank=args.rank,
                                  num_heads=args.num_heads)
    print(json.dumps(info, indent=2, default=str))
    return 0
