"""CLI for encryption at rest: keygen, encrypt, decrypt, rekey (docs/encryption.md).

Thin shell over dicomsafe.crypto: argument handling, passphrase input and output choice only.
Passphrases never come from argv (visible in the process list and shell history): they are read
from the terminal, from a file descriptor (--passphrase-fd), or from DICOMSAFE_PASSPHRASE.
Errors are DicomsafeError subclasses, turned into one-line messages and exit codes by the group.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import os
import sys
from pathlib import Path
from typing import IO, Sequence

import click

from .. import crypto
from ..errors import ConfigError, NoIdentityMatchedError
from ..fsutil import write_secret_file
from . import main

PASSPHRASE_ENV = "DICOMSAFE_PASSPHRASE"


# --- passphrases ----------------------------------------------------------------------------


def _read_fd_passphrase(fd: int) -> bytes:
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            line = fh.readline(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase from file descriptor {fd} ({exc.strerror})") from None
    return line.rstrip(b"\r\n")


def _tty_passphrase(confirm: bool) -> bytes:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise ConfigError(
            f"no terminal to read a passphrase from; use --passphrase-fd N or {PASSPHRASE_ENV}"
        ) from None
    os.close(fd)
    first = getpass.getpass("Enter passphrase: ")
    if confirm and getpass.getpass("Confirm passphrase: ") != first:
        raise ConfigError("passphrases do not match")
    return first.encode("utf-8")


class PassphraseSource:
    """Reads the passphrase once, on first use: decrypt prompts only if the file needs it."""

    def __init__(self, fd: int | None, confirm: bool):
        self._fd = fd
        self._confirm = confirm
        self._value: bytes | None = None

    @property
    def asked(self) -> bool:
        """Whether a passphrase was needed (and read)."""
        return self._value is not None

    def get(self) -> bytes:
        if self._value is None:
            if self._fd is not None:
                value = _read_fd_passphrase(self._fd)
            elif os.environ.get(PASSPHRASE_ENV):
                value = os.environ[PASSPHRASE_ENV].encode("utf-8")
            else:
                value = _tty_passphrase(self._confirm)
            if not value:
                raise ConfigError("empty passphrase")
            self._value = value
        return self._value


class LazyPassphraseIdentity:
    """Asks for the passphrase only when the header holds a passphrase stanza."""

    _TYPES = {"scrypt": "age", "pbkdf2-sha256": "aes"}

    def __init__(self, source: PassphraseSource, *, fips: bool = False):
        self._source = source
        # In FIPS mode only the approved PBKDF2 stanza is ever considered.
        self.fips_approved = fips
        self._types = {"pbkdf2-sha256": "aes"} if fips else self._TYPES

    def unwrap(self, stanzas, *, file_key_size: int = 16):
        kinds = {self._types[s.type] for s in stanzas if s.type in self._types}
        if not kinds:
            return None
        passphrase = self._source.get()
        if "age" in kinds:
            from ..crypto.age import ScryptIdentity

            inner = ScryptIdentity(passphrase)
        else:
            from ..crypto.fips import Pbkdf2Identity

            inner = Pbkdf2Identity(passphrase)
        return inner.unwrap(stanzas, file_key_size=file_key_size)


# --- helpers --------------------------------------------------------------------------------


def _recipients(recipient: Sequence[str], recipients_file: Sequence[str]) -> list:
    found = [crypto.parse_recipient(r) for r in recipient]
    for path in recipients_file:
        found.extend(crypto.load_recipients_file(path))
    return found


def _identities(identity: Sequence[str]) -> list:
    found = []
    for path in identity:
        found.extend(crypto.load_identities(path))
    return found


def _in_path_or_stdin(path: str | None) -> str | IO[bytes]:
    """INPUT as given, or standard input for none or '-'."""
    return sys.stdin.buffer if path in (None, "-") else path


def _open_in(path: str | None) -> IO[bytes]:
    src = _in_path_or_stdin(path)
    return src if not isinstance(src, str) else crypto.open_input(src)  # closed by the caller


def _to_stdout(output: str | None) -> bool:
    return output in (None, "-")


fips_option = click.option(
    "--fips", is_flag=True, help="FIPS mode: aes format and FIPS-approved key types only."
)
passphrase_fd_option = click.option(
    "--passphrase-fd",
    type=int,
    metavar="N",
    help=f"Read the passphrase from file descriptor N (else {PASSPHRASE_ENV}, else the terminal).",
)


# --- keygen ---------------------------------------------------------------------------------


def _secret_file_bytes() -> bytes:
    try:
        from ..pseudonyms import format_secret_file, generate_secret
    except ImportError:  # the pseudonyms module lives on main; same format (CORE_API.md)
        secret = os.urandom(32)
        return (
            b"# dicomsafe pseudonym secret: 32 random bytes as hex. Guard it like a private key.\n"
            + secret.hex().encode("ascii")
            + b"\n"
        )
    return format_secret_file(generate_secret())


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the key to FILE (mode 0600).")
@click.option("--pq", is_flag=True, help="Post-quantum hybrid key (ML-KEM-768 + X25519, age1pq1…).")
@click.option("--secret", is_flag=True, help="Generate a pseudonym secret instead of an age key.")
@click.option(
    "-y", "--to-recipient", "show", type=click.Path(dir_okay=False),
    help="Print the recipients of an existing identity file, and exit.",
)
def keygen(output: str | None, pq: bool, secret: bool, show: str | None) -> None:
    """Generate an age identity (private key) and print its recipient (public key).

    As age-keygen: the identity file starts with "# public key: age1…"; an existing file is
    never overwritten. Give the recipient to whoever encrypts for you; keep the identity secret.
    """
    if show:
        from ..crypto import age

        for ident in crypto.load_identities(show):
            if not isinstance(ident, (age.X25519Identity, age.HybridIdentity)):
                raise ConfigError("-y only works on age identity files")
            click.echo(ident.recipient().encode())
        return
    if secret:
        if pq:
            raise click.UsageError("--secret and --pq cannot be combined")
        data = _secret_file_bytes()
        if output:
            write_secret_file(output, data)
            click.echo("Pseudonym secret written (mode 0600).", err=True)
        else:
            sys.stdout.buffer.write(data)
        return
    from ..crypto import age

    identity = age.HybridIdentity.generate() if pq else age.X25519Identity.generate()
    recipient = identity.recipient().encode()
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    data = f"# created: {created}\n# public key: {recipient}\n{identity.encode()}\n".encode("ascii")
    if output:
        write_secret_file(output, data)
        click.echo(f"Public key: {recipient}", err=True)
    else:
        if not sys.stdout.isatty():
            click.echo(f"Public key: {recipient}", err=True)
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


# --- encrypt --------------------------------------------------------------------------------


@main.command()
@click.option("-r", "--recipient", multiple=True, metavar="RECIPIENT",
              help="age1…/age1pq1… recipient, or a PEM public key / certificate file (aes). Repeatable.")
@click.option("-R", "--recipients-file", multiple=True, type=click.Path(dir_okay=False),
              help="File of recipients, one per line (and PEM blocks for aes). Repeatable.")
@click.option("-p", "--passphrase", is_flag=True, help="Encrypt with a passphrase (prompted, never on argv).")
@passphrase_fd_option
@click.option("--format", "fmt", type=click.Choice(["age", "aes"]), default="age", show_default=True,
              help="age: readable by any age tool. aes: AES-256-GCM (dicomsafe.aes/v1).")
@click.option("-a", "--armor", is_flag=True, help="ASCII-armored output (age format only).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (default or '-': stdout).")
@fips_option
@click.argument("input", required=False, type=click.Path(dir_okay=False, allow_dash=True))
def encrypt(recipient, recipients_file, passphrase, passphrase_fd, fmt, armor, output, fips, input) -> None:
    """Encrypt INPUT (default stdin) to recipients or with a passphrase.

    With -o FILE the file appears only when complete. On stdout, output already written
    cannot be taken back if encryption fails later (exit status is non-zero then).
    """
    if fips and fmt != "aes":
        if fmt == "age" and click.get_current_context().get_parameter_source("fmt").name == "DEFAULT":
            fmt = "aes"
        else:
            raise click.UsageError("--fips requires --format aes")
    if armor and fmt == "aes":
        raise click.UsageError("the aes format has no ASCII armor (-a)")
    if passphrase and (recipient or recipients_file):
        raise click.UsageError("--passphrase cannot be combined with -r/-R")
    if not passphrase and not (recipient or recipients_file):
        raise click.UsageError("give at least one -r/-R recipient, or --passphrase")
    if passphrase:
        secret = PassphraseSource(passphrase_fd, confirm=True).get()
        if fmt == "aes":
            from ..crypto.fips import Pbkdf2Recipient

            recips = [Pbkdf2Recipient(secret)]
        else:
            from ..crypto.age import ScryptRecipient

            recips = [ScryptRecipient(secret)]
    else:
        recips = _recipients(recipient, recipients_file)
    if _to_stdout(output) and not armor and sys.stdout.isatty():
        raise click.UsageError("refusing to write binary ciphertext to a terminal; use -o FILE or -a")
    if not _to_stdout(output):
        crypto.encrypt_file(_in_path_or_stdin(input), output, recips, format=fmt, armor=armor, fips=fips)
        return
    fin = _open_in(input)
    try:
        crypto.encrypt_stream(fin, sys.stdout.buffer, recips, format=fmt, armor=armor, fips=fips)
        sys.stdout.buffer.flush()
    finally:
        if fin is not sys.stdin.buffer:
            fin.close()


# --- decrypt --------------------------------------------------------------------------------


@main.command()
@click.option("-i", "--identity", multiple=True, type=click.Path(dir_okay=False),
              help="Identity file (age key or PEM private key, mode 0600). Repeatable.")
@passphrase_fd_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (default or '-': stdout).")
@fips_option
@click.argument("input", required=False, type=click.Path(dir_okay=False, allow_dash=True))
def decrypt(identity, passphrase_fd, output, fips, input) -> None:
    """Decrypt INPUT (default stdin); the format (age, aes, armored) is detected.

    With -o FILE, plaintext goes to a temporary file renamed only after the whole file
    authenticated: on any failure no output file is left. On stdout, plaintext is released
    chunk by chunk as each authenticates; a later failure cannot retract it (exit 3).
    Passphrase-encrypted files prompt for the passphrase.
    """
    identities = _identities(identity)
    source = PassphraseSource(passphrase_fd, confirm=False)
    identities.append(LazyPassphraseIdentity(source, fips=fips))
    try:
        _decrypt(input, output, identities, fips)
    except NoIdentityMatchedError:
        if not identity and not source.asked:
            raise ConfigError("the file is not passphrase-encrypted: give its identity with -i") from None
        raise


def _decrypt(input: str | None, output: str | None, identities: list, fips: bool) -> None:
    if not _to_stdout(output):
        crypto.decrypt_file(_in_path_or_stdin(input), output, identities, fips=fips)
        return
    fin = _open_in(input)
    try:
        crypto.decrypt_stream(fin, sys.stdout.buffer, identities, fips=fips)
        sys.stdout.buffer.flush()
    finally:
        if fin is not sys.stdin.buffer:
            fin.close()


# --- rekey ----------------------------------------------------------------------------------


@main.command()
@click.option("-i", "--identity", multiple=True, type=click.Path(dir_okay=False),
              help="Current identity file that opens the files. Repeatable.")
@click.option("-r", "--recipient", multiple=True, metavar="RECIPIENT", help="New recipient. Repeatable.")
@click.option("-R", "--recipients-file", multiple=True, type=click.Path(dir_okay=False),
              help="File of new recipients. Repeatable.")
@passphrase_fd_option
@fips_option
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=False))
def rekey(identity, recipient, recipients_file, passphrase_fd, fips, files) -> None:
    """Replace the recipients of encrypted FILES, rewriting only their headers.

    The file key and the payload bytes stay the same, so this takes milliseconds for any file
    size; afterwards only the new recipients can decrypt. Files are rewritten atomically.
    """
    if not (recipient or recipients_file):
        raise click.UsageError("give at least one new recipient with -r/-R")
    identities = _identities(identity)
    identities.append(LazyPassphraseIdentity(PassphraseSource(passphrase_fd, confirm=False), fips=fips))
    recips = _recipients(recipient, recipients_file)
    for n, path in enumerate(files, 1):
        how = crypto.rekey_file(Path(path), identities, recips, fips=fips)
        click.echo(f"rekeyed file {n} of {len(files)} ({how})", err=True)
