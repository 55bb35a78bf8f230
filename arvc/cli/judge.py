"""`arvc judge VIDEO --prompt TEXT`: score a video of the tiny model's world against its prompt (arvc/tiny/judge.py)."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    j = sub.add_parser("judge", help="score a video of the tiny model's world against its prompt")
    j.add_argument("video")
    j.add_argument("--prompt", required=True)
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=command)


def command(args) -> int:
    from arvc.tiny.judge import judge_video

    result = judge_video(args.video, args.prompt)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"color {result['color']} ({'match' if result['color_match'] else 'MISMATCH'}), "
              f"direction {result['direction']} ({'match' if result['direction_match'] else 'MISMATCH'}), "
              f"object found in {100 * result['found_fraction']:.1f} % of {result['frames']} frames")
    return 0
