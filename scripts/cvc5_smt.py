#!/usr/bin/env python3
"""The `cvc5` executable's interactive mode, over the cvc5 Python wheel (PyPI
`cvc5`, which ships the solver as a library only). Run through scripts/cvc5.

It serves what `zt-policy prove` (cedar-policy-symcc's LocalSolver) sends:
`--lang smt`, `--key=value` options (Solver.setOption), SMT-LIB 2 commands on
stdin, one at a time, each answer on stdout as it comes, `(error "...")` for a
failed command, `(reset)` (a fresh solver), `(exit)`. The parsing and solving
are cvc5's own (InputParser, Command.invoke); this file only splits stdin into
complete commands and hands them over.
"""
import os
import sys

import cvc5


def parse_args(argv):
    opts = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--lang", "-L"):
            i += 2
            continue
        if a.startswith("--lang="):
            i += 1
            continue
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            else:
                k, v = a[2:], "true"
            opts.append((k, v))
        i += 1
    return opts


class Session:
    def __init__(self, opts):
        self.opts = opts
        self.new()

    def new(self):
        self.tm = cvc5.TermManager() if hasattr(cvc5, "TermManager") else None
        self.solver = cvc5.Solver(self.tm) if self.tm is not None else cvc5.Solver()
        for k, v in self.opts:
            self.solver.setOption(k, v)
        self.sm = cvc5.SymbolManager(self.tm if self.tm is not None else self.solver)
        self.parser = cvc5.InputParser(self.solver, self.sm)
        self.parser.setIncrementalStringInput(cvc5.InputLanguage.SMT_LIB_2_6, "<stdin>")


def complete_commands(buf):
    """Split buf into complete top-level s-expressions; return (cmds, rest)."""
    cmds, depth, start, i, n = [], 0, None, 0, len(buf)
    while i < n:
        c = buf[i]
        if c == ";":
            j = buf.find("\n", i)
            if j < 0:
                break  # wait for rest of comment line
            i = j + 1
            continue
        if c == '"':
            j = i + 1
            while True:
                j = buf.find('"', j)
                if j < 0:
                    return cmds, buf[start if start is not None else i:]
                if j + 1 < n and buf[j + 1] == '"':
                    j += 2
                    continue
                break
            i = j + 1
            continue
        if c == "|":
            j = buf.find("|", i + 1)
            if j < 0:
                return cmds, buf[start if start is not None else i:]
            i = j + 1
            continue
        if c == "(":
            if depth == 0:
                start = i
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                cmds.append(buf[start:i + 1])
                start = None
        i += 1
    if start is not None:
        return cmds, buf[start:]
    return cmds, ""


def esc(msg):
    return msg.replace('"', '""').replace("\n", " ")


def main():
    s = Session(parse_args(sys.argv[1:]))
    out = sys.stdout
    buf = ""
    for line in sys.stdin:
        buf += line
        cmds, buf = complete_commands(buf)
        for text in cmds:
            head = text[1:].lstrip().split(None, 1)[0].rstrip(")") if len(text) > 2 else ""
            if head == "exit":
                out.flush()
                return 0
            if head == "reset":
                s.new()
                continue
            try:
                s.parser.appendIncrementalStringInput(text + "\n")
                # exactly one nextCommand per complete command: asking again
                # at end of input breaks the incremental parser (cvc5 1.3.1)
                cmd = s.parser.nextCommand()
            except Exception as e:  # parse error: cvc5 reports it and quits
                out.write('(error "Parse Error: %s")\n' % esc(str(e)))
                out.flush()
                return 1
            if cmd.isNull():
                continue
            try:
                res = cmd.invoke(s.solver, s.sm)
            except Exception as e:
                res = '(error "%s")' % esc(str(e))
            if res:
                out.write(res if res.endswith("\n") else res + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # skip interpreter teardown (cvc5 objects segfault on GC order)
