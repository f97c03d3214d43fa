"""The live progress display on a terminal, plain lines elsewhere, and `matterflow run` using them."""

from __future__ import annotations

import io
import json
from pathlib import Path

from click.testing import CliRunner

from matterflow.cli import cli
from matterflow.progress import LiveDisplay, PlainDisplay, display_for


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_live_block_and_a_pipe_gets_plain_lines() -> None:
    assert isinstance(display_for(Terminal()), LiveDisplay)
    assert isinstance(display_for(io.StringIO()), PlainDisplay)


def test_the_live_block_shows_each_steps_state_progress_and_last_log_line() -> None:
    screen = Terminal()
    progress = {"job-2": 40}
    display = LiveDisplay(screen, progress_of=progress.get)
    with display:
        display.step_started("ingest", "job-1")
        display.step_finished("ingest", ok=True, seconds=1.25)
        display.step_started("shard_0", "job-2")
        display.step_log("shard_0", "16/40 windows done")
        display.step_started("shard_1", "job-3")
        display.step_finished("shard_1", ok=False, seconds=3.0, detail="EndpointError: every endpoint failed")
        rows = display.lines()
        display.message("analyse: 4 branches in parallel")
    assert rows[0].startswith("  ✓ ingest") and "1.2 s" in rows[0]
    assert rows[1].startswith("  ▶ shard_0") and " 40%" in rows[1] and rows[1].endswith("16/40 windows done")
    assert rows[2].startswith("  ✗ shard_1") and "EndpointError" in rows[2]
    output = screen.getvalue()
    assert "\x1b[3F\x1b[J" in output, "the block is redrawn in place"
    assert "analyse: 4 branches in parallel\n" in output, "messages scroll above the block"
    assert output.rstrip("\n").endswith("EndpointError: every endpoint failed"), "the final block is left on screen"


def test_plain_lines_name_every_event() -> None:
    out = io.StringIO()
    display = PlainDisplay(lambda line: print(line, file=out))
    display.step_started("ingest", "job-1")
    display.step_log("ingest", "staged 60 pages")
    display.step_finished("ingest", ok=True, seconds=0.5)
    assert out.getvalue().splitlines() == ["ingest: started (job job-1)", "  [ingest] staged 60 pages", "ingest: done in 0.5 s"]


def test_matterflow_run_streams_step_logs_and_prints_the_result(tmp_path: Path) -> None:
    flow = {
        "summary": "t",
        "value": {
            "modules": [
                {
                    "id": "hello",
                    "value": {
                        "type": "rawscript",
                        "language": "python3",
                        "content": "def main(name):\n    print(f'greeting {name}')\n    return {'hello': name}\n",
                        "input_transforms": {"name": {"type": "javascript", "expr": "flow_input.name"}},
                    },
                }
            ]
        },
    }
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(json.dumps(flow))
    result = CliRunner().invoke(cli, ["run", str(flow_file), "--input", '{"name": "court"}'])
    assert result.exit_code == 0, result.output
    assert "  [hello] greeting court" in result.stderr
    assert "hello: done in" in result.stderr
    assert json.loads(result.stdout) == {"hello": "court"}
