"""A study's published protocol end to end: `segcore run --study S --data DIR --out RUN`.

    from SegCore.protocol import run_protocol, read_status

    result = run_protocol("atrium", "LA-phantom", "runs/la", tiny=True)   # every stage, then the report
    read_status("runs/la")["stages"]      # [{"name": "locator", "kind": "train", "state": "finished"}, ...]

The stages come from the study file (`Study.protocol`, SegCore/studies/<study>.py): train stages are training
runs (RUN/<stage>/, a `segcore train` run folder each), test stages predict the held-out cases with trained
models and evaluate them (RUN/<stage>/). RUN/report.json and RUN/report.md collect every test stage. RUN/protocol.json
records what was asked (study, data, --tiny, --set); RUN/status.json says where the protocol stands. Running the
same command again resumes: finished stages are kept, an interrupted training continues from its last.pt.
"""

from SegCore.protocol.runner import format_status, read_status, run_protocol

__all__ = ["format_status", "read_status", "run_protocol"]
