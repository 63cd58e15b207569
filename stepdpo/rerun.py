"""The exact command that reruns a job, rebuilt from its parsed options, with secrets removed.

`label` and `generate` finish a run with holes (rows that failed after their retries) with
exit code 1 and one line naming the rerun that retries only those rows: the same command. It
is rebuilt here from the parsed ``argparse.Namespace`` (not ``sys.argv``, which is not the
command when a command runs in-process) against the command's own ``configure``: positionals
first, then every option whose value differs from its default, under its first spelling.

The command is also recorded in ``run.json`` (``rerun``), so a reader refusing an unfinished
folder can print it. It must work from any directory, not only the one the run was started in:
every value that names a file or folder is made absolute (:func:`located`). Which options those
are is read off their metavars — the same words ``--help`` shows the user (:func:`path_kind`):
``INPUT``, ``RUN_DIR``, ``DIR``, ``FILE``… are paths; ``MODEL`` (a hub id or a local folder),
``NAME``/``SPEC`` (a judge or backend spec whose tail may be a local model: ``hf:./policy``,
``mc:hf:./policy``) and ``NAME|FILE`` (a built-in template or a file) are paths only when one
exists under that name. A URL in it may carry credentials (``openai-compatible:M@https://user:pass@
host/v1?api_key=…``): :func:`redact` removes the userinfo and replaces the values of
secret-looking query keys (:data:`REDACTED` marks both), so nothing secret reaches a file or a
log line. Such a command runs again once the user puts their credentials back where it says so.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query keys whose values are credentials: api_key, apikey, key, token, access_token, auth,
# password, secret, sig/signature (pre-signed URLs), credential…
_SECRET_KEY = re.compile(r"key|token|secret|passw|auth|sig|credential|session", re.IGNORECASE)
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s]+", re.IGNORECASE)

#: :func:`path_kind` of an option whose value is a file or folder, existing or to be made.
PATH = "path"
#: … of a model: a hub id, or a local folder when one of that name exists (it wins, in
#: transformers and in our loaders).
MODEL = "model"
#: … of a judge or backend spec ``KIND:REST``: REST is a :data:`MODEL` (or a spec again: ``mc:hf:M``).
SPEC = "spec"
#: … of a template: a built-in name or a file. A built-in wins over a file of its name, and
#: built-in names are bare words, so only a file whose name has a ``/`` or a ``.`` is a path.
TEMPLATE = "template"
_METAVARS = {"INPUT": PATH, "PROBLEMS": PATH, "RUN_DIR": PATH, "DIR": PATH, "FILE": PATH, "OUT": PATH,
             "OTHER_OUT": PATH, "PAIRS": PATH, "MODEL": MODEL, "SPEC": SPEC, "NAME": SPEC, "NAME|FILE": TEMPLATE}


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL after all (an odd port): hide what follows the scheme
        return url.split("://", 1)[0] + "://" + REDACTED
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{REDACTED}@{host}" if at else host  # user:password@ marked, so the line says so
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if _SECRET_KEY.search(k) else v) for k, v in pairs], safe=REDACTED)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(text: str) -> str:
    """``text`` with every URL's userinfo replaced by :data:`REDACTED` and its secret query values replaced by
    :data:`REDACTED`; text without a URL comes back unchanged."""
    return _URL.sub(lambda m: _redact_url(m.group(0)), text)


def path_kind(action: argparse.Action) -> str | None:
    """Whether the value of ``action`` names a file or folder, and how (:data:`PATH`,
    :data:`MODEL`, :data:`SPEC`, :data:`TEMPLATE`), read off its metavar (a positional's
    metavar, else its dest in capitals, as ``--help`` shows it); None: it names nothing on disk."""
    metavar = action.metavar if isinstance(action.metavar, str) else None
    if metavar is None and not action.option_strings:
        metavar = action.dest.upper()
    return _METAVARS.get(metavar or "")


def _here(value: str) -> bool:
    """Whether ``value`` is a relative path to something that exists in the current directory."""
    return bool(value) and "://" not in value and not os.path.isabs(value) and not value.startswith("~") \
        and os.path.exists(value)


def located(kind: str | None, value: str) -> str:
    """``value`` of an option of ``kind`` (:func:`path_kind`) as it reads from any directory:
    a relative path made absolute; a name, a URL, an absolute or ``~`` path unchanged."""
    if kind == PATH:
        keep = not value or "://" in value or os.path.isabs(value) or value.startswith("~")
        return value if keep else os.path.abspath(value)
    if kind == MODEL:
        return os.path.abspath(value) if _here(value) else value
    if kind == TEMPLATE:
        named = "/" in value or os.sep in value or "." in os.path.basename(value)
        return os.path.abspath(value) if named and _here(value) and os.path.isfile(value) else value
    if kind == SPEC and "://" not in value:  # a spec with a URL names a server, not a folder
        prefix, colon, rest = value.partition(":")
        if colon and rest:
            return f"{prefix}:{os.path.abspath(rest) if _here(rest) else located(SPEC, rest)}"
    return value


def command_words(prog: str, configure: Callable[[argparse.ArgumentParser], None],
                  args: argparse.Namespace) -> list[str]:
    """The words of the command line that gives ``args`` again (``prog`` = ``stepdpo NAME``),
    every file and folder in it absolute (:func:`located`), before redaction."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False)
    configure(parser)
    positionals: list[str] = []
    options: list[str] = []
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.dest in (argparse.SUPPRESS, "help") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        kind = path_kind(action)
        if not action.option_strings:
            if value is not None:
                positionals.extend(located(kind, str(v)) for v in (value if isinstance(value, list) else [value]))
            continue
        if value is None or (type(value) is type(action.default) and value == action.default):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            options.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:  # store_true / store_false
            options.append(flag)
        elif isinstance(value, list):
            options.extend([flag, *(located(kind, str(v)) for v in value)])
        else:
            options.extend([flag, located(kind, str(value))])
    return [*prog.split(), *positionals, *options]


def rerun_command(prog: str, configure: Callable[[argparse.ArgumentParser], None],
                  args: argparse.Namespace) -> str:
    """The shell line that reruns the job of ``args``, secrets removed (:func:`redact`)."""
    return shlex.join(redact(word) for word in command_words(prog, configure, args))


def holes_line(command: str, failed: int, total: int, what: str, where: str, rerun: str,
               how: str = "after their retries") -> str:
    """The one stderr line of a finished run whose ``failed`` of ``total`` rows are missing:
    how many, where the reasons are, and the rerun that retries only them."""
    note = f" (credentials removed from the URL: put yours back where it says {REDACTED})" \
        if REDACTED in rerun else ""
    return (f"{command}: {failed} of {total} {what} failed {how} (reasons: {where}); rerun to retry only them: "
            f"{rerun}{note}")
