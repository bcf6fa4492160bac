#!/usr/bin/env python3
"""Static checks of the repository's Dockerfile (no Docker engine runs in CI).

hadolint-style rules, plus the project's own promises about the image:

- every base image is pinned: a tag with a version number (never `latest`, never
  untagged) or a digest; a `FROM` that names a stage must name an existing stage, and a
  stage chosen by `${VARIANT}` must exist for every variant (cpu, cuda);
- the final stage runs as the non-root user 10001 (`USER 10001:10001`);
- no `ADD` (and certainly none of a URL), no `curl | sh`, no `sudo`, no secrets in `ENV`;
- every `apt-get install` has `-y --no-install-recommends`, follows `apt-get update` in
  the same `RUN` and is followed by `rm -rf /var/lib/apt/lists/*`; no `apt-get upgrade`;
- the final stage has `ENTRYPOINT ["kiroku"]` (exec form) and a `HEALTHCHECK`, or
  `HEALTHCHECK NONE` with a comment saying which probe (/healthz, /readyz) replaces it;
- `cargo build` is `--release --locked`; the CUDA stage builds the cargo feature
  `cuda`, and `crates/kiroku-cli/Cargo.toml` really has that feature;
- `.dockerignore` exists and keeps `target/` out of the context.

Usage: dockerfile_check.py [REPO_ROOT]   (exit status 1 and one line per problem)
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("cpu", "cuda")
KIROKU_UID = "10001"


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str
    comments: list[str] = field(default_factory=list)  # comment lines just above


@dataclass
class Stage:
    index: int
    name: str | None
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> tuple[list[Instruction], list[Instruction]]:
    """Returns (global instructions before the first FROM, all instructions)."""
    instructions: list[Instruction] = []
    comments: list[str] = []
    buffer = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            if stripped.startswith("#"):
                comments.append(stripped.lstrip("#").strip())
            else:
                comments = []
            continue
        if buffer and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip(), comments))
        buffer, comments = "", []
    head = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        head.append(instruction)
    return head, instructions


def arg_defaults(head: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in head:
        if instruction.keyword == "ARG":
            name, _, value = instruction.args.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def substitute(value: str, args: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), value
    )


def image_is_pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag (a registry port is not a tag)
        return False
    return tag != "latest" and re.search(r"\d", tag) is not None


def check(root: Path) -> list[str]:
    problems: list[str] = []
    dockerfile = root / "Dockerfile"
    if not dockerfile.is_file():
        return ["Dockerfile: missing"]
    head, instructions = parse(dockerfile.read_text())

    def problem(instruction: Instruction | None, message: str) -> None:
        where = f"Dockerfile:{instruction.line}" if instruction else "Dockerfile"
        problems.append(f"{where}: {message}")

    globals_ = arg_defaults(head)
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(len(stages), name, parts[0], instruction.line))
        elif stages:
            stages[-1].instructions.append(instruction)
    if not stages:
        return ["Dockerfile: no FROM"]
    stage_names = {stage.name for stage in stages if stage.name}

    def check_image_ref(ref: str, instruction: Instruction, what: str) -> None:
        resolved = substitute(ref, globals_)
        if "$" in resolved:
            # A stage chosen by an ARG (`build-${VARIANT}`): every variant must exist.
            if "VARIANT" not in ref:
                problem(instruction, f"{what} {ref!r} depends on an ARG without a default")
                return
            for variant in VARIANTS:
                candidate = substitute(ref, {**globals_, "VARIANT": variant})
                if candidate not in stage_names:
                    problem(instruction, f"{what} {ref!r}: no stage {candidate!r} for VARIANT={variant}")
            return
        if resolved in stage_names:
            return
        if not image_is_pinned(resolved):
            problem(instruction, f"{what} {resolved!r} is not pinned (tag with a version or @sha256 digest)")

    if globals_.get("VARIANT") not in VARIANTS:
        problem(None, f"ARG VARIANT must default to one of {VARIANTS}")
    for stage in stages:
        from_instruction = Instruction(stage.line, "FROM", stage.base)
        check_image_ref(stage.base, from_instruction, "base image")
        for instruction in stage.instructions:
            keyword, args = instruction.keyword, instruction.args
            if keyword == "ADD":
                if re.search(r"(https?|ftp)://|git@", args):
                    problem(instruction, "ADD of a URL: download in RUN with a checksum, or COPY")
                else:
                    problem(instruction, "ADD: use COPY (ADD unpacks archives and fetches URLs)")
            if keyword == "COPY":
                source = re.search(r"--from=(\S+)", args)
                if source and not source.group(1).isdigit():
                    check_image_ref(source.group(1), instruction, "COPY --from")
            if keyword == "WORKDIR" and not substitute(args, globals_).startswith("/"):
                problem(instruction, "WORKDIR must be absolute")
            if keyword == "ENV":
                for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                    if re.search(r"PASSWORD|SECRET|TOKEN|PRIVATE|_KEY$", name):
                        problem(instruction, f"ENV {name}: secrets come from Kubernetes Secrets, never the image")
            if keyword == "RUN":
                check_run(instruction, problem)
    final = stages[-1]
    users = [i for i in final.instructions if i.keyword == "USER"]
    if not users:
        problem(None, "final stage has no USER (it would run as root)")
    else:
        user = users[-1].args.split(":")[0]
        if user in ("root", "0") or user != KIROKU_UID:
            problem(users[-1], f"final stage must run as uid {KIROKU_UID}, not {users[-1].args!r}")
        later = [i for i in final.instructions if i.line > users[-1].line and i.keyword == "RUN"]
        for instruction in later:
            problem(instruction, "RUN after the final USER (build steps run as root, before USER)")
    entrypoints = [i for i in final.instructions if i.keyword == "ENTRYPOINT"]
    if not entrypoints:
        problem(None, "final stage has no ENTRYPOINT")
    elif not re.fullmatch(r'\[\s*"(/usr/local/bin/)?kiroku"\s*\]', entrypoints[-1].args):
        problem(entrypoints[-1], 'ENTRYPOINT must be ["kiroku"] (exec form, the one binary)')
    healthchecks = [i for i in final.instructions if i.keyword == "HEALTHCHECK"]
    if not healthchecks:
        problem(None, "final stage has no HEALTHCHECK (or HEALTHCHECK NONE with the probe documented)")
    elif healthchecks[-1].args.upper() == "NONE":
        documented = " ".join(healthchecks[-1].comments)
        if "/healthz" not in documented or "/readyz" not in documented:
            problem(healthchecks[-1], "HEALTHCHECK NONE needs a comment naming the /healthz and /readyz probes")
    exposed = " ".join(i.args for i in final.instructions if i.keyword == "EXPOSE").split()
    for port in exposed:
        if int(port.split("/")[0]) < 1024:
            problem(None, f"EXPOSE {port}: a non-root user cannot bind ports below 1024")

    # The CUDA variant builds a cargo feature that must exist.
    text = dockerfile.read_text()
    feature = re.search(r"KIROKU_CARGO_FEATURES=(\w+)", text)
    manifest = tomllib.loads((root / "crates/kiroku-cli/Cargo.toml").read_text())
    features = manifest.get("features", {})
    if not feature:
        problem(None, "no stage sets KIROKU_CARGO_FEATURES=cuda (the CUDA variant)")
    elif feature.group(1) not in features:
        problem(None, f"cargo feature {feature.group(1)!r} is not a feature of kiroku-cli ({sorted(features)})")
    elif not any("whisper-rs/cuda" in dep or "kiroku-engine/cuda" in dep for dep in features[feature.group(1)]):
        problem(None, f"kiroku-cli feature {feature.group(1)!r} does not enable whisper-rs' cuda")

    ignore = root / ".dockerignore"
    if not ignore.is_file():
        problem(None, ".dockerignore is missing")
    else:
        lines = [l.strip() for l in ignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
        allow_list = "*" in lines
        if not allow_list and not any(l.rstrip("/").endswith("target") for l in lines):
            problems.append(".dockerignore: target/ must be excluded")
        if any(l in ("!target", "!target/", "!.git", "!.git/") for l in lines):
            problems.append(".dockerignore: target/ and .git/ must stay out of the context")
    return problems


def check_run(instruction: Instruction, problem) -> None:
    commands = re.split(r"&&|;|\|\|", instruction.args)
    script = instruction.args
    if re.search(r"\bsudo\b", script):
        problem(instruction, "sudo in RUN (build steps already run as root)")
    if re.search(r"(curl|wget)[^|]*\|\s*(ba|z)?sh", script):
        problem(instruction, "piping a download into a shell")
    if re.search(r"apt-get\s+(dist-)?upgrade", script):
        problem(instruction, "apt-get upgrade: use a newer pinned base image instead")
    if re.search(r"\bapt\s+(install|update)", script):
        problem(instruction, "use apt-get, not apt, in scripts")
    installs = [c for c in commands if re.search(r"apt-get\s+install", c)]
    for command in installs:
        if "--no-install-recommends" not in command:
            problem(instruction, "apt-get install without --no-install-recommends")
        if not re.search(r"\s(-y|--yes|-qq?y|--assume-yes)\b", command):
            problem(instruction, "apt-get install without -y")
    if installs:
        update = script.find("apt-get update")
        install = script.find("apt-get install")
        if update < 0 or update > install:
            problem(instruction, "apt-get install without apt-get update first in the same RUN")
        cleanup = script.find("rm -rf /var/lib/apt/lists/*")
        if cleanup < install:
            problem(instruction, "apt-get install without rm -rf /var/lib/apt/lists/* after it")
    if re.search(r"cargo\s+build", script):
        if "--locked" not in script or "--release" not in script:
            problem(instruction, "cargo build must be --release --locked")


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    problems = check(root)
    for line in problems:
        print(line)
    if problems:
        print(f"dockerfile check: {len(problems)} problem(s)")
        return 1
    print("dockerfile check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
