"""`duquant bench SUITE`: every suite names a script that exists, and the door passes through."""

from __future__ import annotations

from benchmarks import cli


def test_every_suite_has_its_script():
    for name, (script, what) in cli.SUITES.items():
        assert (cli.HERE / script).is_file(), name
        assert what


def test_unknown_suite_lists_the_suites(capsys):
    assert cli.main(["nope"]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUITES)
    assert cli.main(["--help"]) == 0


def test_suite_runs_its_script_with_the_arguments(monkeypatch, tmp_path, capsys):
    # A throwaway suite: the script runs in-process with exactly the arguments after the name,
    # and its exit code comes back.
    monkeypatch.setattr(cli, "HERE", tmp_path)  # the source tree stays untouched
    monkeypatch.setitem(cli.SUITES, "echo", ("_echo.py", "test"))
    (tmp_path / "_echo.py").write_text("import sys\nprint('ARGS', sys.argv[1:])\nsys.exit(3)\n")
    assert cli.main(["echo", "--out", str(tmp_path)]) == 3
    assert f"ARGS ['--out', '{tmp_path}']" in capsys.readouterr().out
