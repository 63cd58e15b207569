"""The exact command that reruns a job, rebuilt from its parsed options, with secrets removed.

`label` and `generate` finish a run with holes (rows that failed after their retries) with
exit code 1 and one line naming the rerun that retries only those rows: the same command. It
is rebuilt here from the parsed ``argparse.Namespace`` (not ``sys.argv``, which is not the
command when a command runs in-process) against the command's own ``configure``: positionals
first, then every option whose value differs from its default, under its first spelling.

The command is also recorded in ``run.json`` (``rerun``), so a reader refusing an unfinished
folder can print it. A URL in it may carry credentials (``openai-compatible:M@https://user:pass@
host/v1?api_key=…``): :func:`redact` removes the userinfo and replaces the values of
secret-looking query keys (:data:`REDACTED` marks both), so nothing secret reaches a file or a
log line. Such a command runs again once the user puts their credentials back where it says so.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "REDACTED"
# Query keys whose values are credentials: api_key, apikey, key, token, access_token, auth,
# password, secret, sig/signature (pre-signed URLs), credential…
_SECRET_KEY = re.compile(r"key|token|secret|passw|auth|sig|credential|session", re.IGNORECASE)
_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s]+", re.IGNORECASE)


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


def command_words(prog: str, configure: Callable[[argparse.ArgumentParser], None],
                  args: argparse.Namespace) -> list[str]:
    """The words of the command line that gives ``args`` again (``prog`` = ``stepdpo NAME``),
    before redaction."""
    parser = argparse.ArgumentParser(prog=prog, add_help=False)
    configure(parser)
    positionals: list[str] = []
    options: list[str] = []
    for action in parser._actions:  # argparse has no public list of a parser's options
        if action.dest in (argparse.SUPPRESS, "help") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if not action.option_strings:
            if value is not None:
                positionals.extend(str(v) for v in (value if isinstance(value, list) else [value]))
            continue
        if value is None or (type(value) is type(action.default) and value == action.default):
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            options.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:  # store_true / store_false
            options.append(flag)
        elif isinstance(value, list):
            options.extend([flag, *(str(v) for v in value)])
        else:
            options.extend([flag, str(value)])
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
