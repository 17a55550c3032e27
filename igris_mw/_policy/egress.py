"""Egress policy: which addresses a connection's upstream may reach.

One classification serves both checks:

* at create / PATCH, :func:`check_url_literal` looks at the URL only (no DNS):
  a literal forbidden address in any notation, or a cloud metadata name, is a
  422 ``upstream_forbidden``;
* at connect, ``resolver.EgressResolver`` (an aiohttp resolver) checks every
  address a name resolves to, drops the forbidden ones and refuses the host
  when none is left (or any is a metadata address); aiohttp then connects to
  exactly the addresses the resolver returned (the URL's name stays in
  ``Host`` and TLS SNI), so a second lookup that answers differently (DNS
  rebinding) never happens. aiohttp does not call the resolver for an IP
  literal, so :func:`check_connect_host` covers literals.

An address is forbidden when it is loopback, private, link-local, shared
(100.64/10), unspecified, multicast, broadcast or reserved, judged on the IPv4
address an IPv6 form embeds (IPv4-mapped, -compatible, NAT64, 6to4). Allowed
networks open forbidden ranges on purpose. Cloud metadata endpoints are
refused always, whatever is allowed.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TypeAlias
from urllib.parse import unquote, urlsplit

import attrs

from igris_mw._errors import ConfigurationError, UpstreamError, ValidationError

__all__ = [
    "ALLOW_SETTING_HINT",
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "EgressForbidden",
    "EgressPolicy",
    "Network",
    "Refusal",
    "UpstreamForbidden",
    "check_address",
    "check_connect_host",
    "check_url_literal",
    "classify_address",
    "classify_host",
    "parse_host_address",
    "parse_networks",
]

Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_SETTING_HINT = (
    "to let connections reach an internal network, list it in "
    "IGRIS_ALLOW_UPSTREAM_NETWORKS (comma-separated CIDRs), serve "
    "--allow-upstream-network CIDR, or IgrisGateway(allow_upstream_networks=[...])"
)
_METADATA_HINT = "cloud metadata endpoints are refused always; no setting opens them"

METADATA_ADDRESSES: frozenset[Address] = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
METADATA_NAMES: frozenset[str] = frozenset({"metadata.google.internal", "metadata.goog"})

# Checked in order; the first match names the reason. Explicit lists rather
# than ipaddress' is_* alone: those changed between Python patch releases
# (3.11.10, 3.12.4), and the policy must not.
_V4_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason)
    for net, reason in (
        ("255.255.255.255/32", "broadcast"),
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "reserved"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "shared"),
        ("192.0.0.0/24", "reserved"),
        ("192.0.2.0/24", "reserved"),
        ("192.88.99.0/24", "reserved"),
        ("198.18.0.0/15", "reserved"),
        ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
    )
)
_V6_RANGES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason)
    for net, reason in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "private"),
        ("100::/64", "reserved"),
        ("2001::/23", "reserved"),
        ("2001:db8::/32", "reserved"),
        ("3fff::/20", "reserved"),
        ("fc00::/7", "private"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "reserved"),
        ("ff00::/8", "multicast"),
    )
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_V6_COMPATIBLE = ipaddress.IPv6Network("::/96")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V6_6TO4 = ipaddress.IPv6Network("2002::/16")
# Full stops that IDNA maps onto "." (ideographic, fullwidth, halfwidth).
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


@attrs.frozen
class Refusal:
    """Why a host is refused: ``reason`` is e.g. ``loopback`` or ``metadata``."""

    host: str
    reason: str
    address: str | None = None

    @property
    def always(self) -> bool:
        """True for cloud metadata: no allowed network opens it."""
        return self.reason == "metadata"

    def describe(self) -> str:
        """The operator's sentence: what the host is and how (or whether) to open it."""
        where = _shorten(self.host)
        if self.address is not None and self.address != self.host:
            where = f"{where} ({self.address})"
        if self.always:
            return f"{where} is a cloud metadata endpoint; {_METADATA_HINT}"
        return f"{where} is a {self.reason} address, which is forbidden; {ALLOW_SETTING_HINT}"


class UpstreamForbidden(ValidationError):
    """422 at create / PATCH: ``upstreamUrl`` names a forbidden address or a metadata name."""

    code = "upstream_forbidden"

    def __init__(self, refusal: Refusal, field: str = "upstreamUrl") -> None:
        super().__init__(field, refusal.describe())
        self.refusal = refusal


class EgressForbidden(UpstreamError):
    """502 at connect: the upstream host is (or resolves to) a forbidden address.

    Not an ``OSError`` on purpose: raised inside aiohttp's resolver it reaches
    the caller of ``session.request`` as itself, not wrapped in
    ``ClientConnectorDNSError``. The message names the host but never the
    resolved address (a caller need not learn the internal network); the
    operator's log can use ``refusal.describe()``.
    """

    code = "upstream_forbidden"

    def __init__(self, refusal: Refusal) -> None:
        host = _shorten(refusal.host)
        if refusal.always:
            why = f"{host} is a cloud metadata endpoint, which is refused always"
        elif refusal.address is not None and refusal.address != refusal.host:
            why = (
                f"{host} resolves only to forbidden addresses ({refusal.reason} among them); "
                f"{ALLOW_SETTING_HINT}"
            )
        else:
            why = f"{host} is a {refusal.reason} address; {ALLOW_SETTING_HINT}"
        super().__init__(f"egress policy: the connection's upstream {why}; nothing was sent")
        self.host = refusal.host
        self.refusal = refusal


def _shorten(text: str, limit: int = 100) -> str:
    printable = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return printable if len(printable) <= limit else printable[:limit] + "..."


def parse_networks(value: str | Iterable[str] | None) -> tuple[Network, ...]:
    """Parse allowed networks: ``"10.0.0.0/8, 127.0.0.0/8"`` or a list of CIDRs.

    A bare address is a one-address network. Raises ``ConfigurationError``
    naming the bad entry (host bits set, not a network).
    """
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    networks: list[Network] = []
    for raw in items:
        if not isinstance(raw, str):
            raise ConfigurationError(
                f"allowed upstream networks must be CIDR strings, got {type(raw).__name__}"
            )
        text = raw.strip()
        if not text:
            continue
        shown = _shorten(text, 60)
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ConfigurationError(
                    f"allowed upstream network {shown!r} is not a CIDR network "
                    "(e.g. 10.0.0.0/8 or fd00::/8)"
                ) from None
            raise ConfigurationError(
                f"allowed upstream network {shown!r} has host bits set; did you mean {loose}?"
            ) from None
    return tuple(networks)


def _ipv4_number(part: str) -> int | None:
    """One part of a legacy IPv4 literal (inet_aton / WHATWG rules), or None."""
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if digits == "":
            return 0
        allowed = "0123456789abcdefABCDEF"
    elif len(part) > 1 and part[0] == "0":
        digits, base, allowed = part[1:], 8, "01234567"
    else:
        digits, base, allowed = part, 10, "0123456789"
    if not digits or any(ch not in allowed for ch in digits):
        return None
    return int(digits, base)


def _ends_in_number(host: str) -> bool:
    last = host.split(".")[-1]
    if last and all(ch in "0123456789" for ch in last):
        return True
    return last[:2] in ("0x", "0X") and all(ch in "0123456789abcdefABCDEF" for ch in last[2:])


def _parse_ipv4_legacy(host: str) -> ipaddress.IPv4Address | None:
    """``127.1``, ``0x7f.1``, ``2130706433``, ``0177.0.0.1``: what inet_aton accepts."""
    parts = host.split(".")
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        return None
    total = last
    for i, n in enumerate(head):
        total += n << (8 * (3 - i))
    return ipaddress.IPv4Address(total)


def parse_host_address(host: str) -> Address | None:
    """The IP address a URL host denotes, in any notation, or None for a name.

    Raises ``ValueError`` for a host that looks numeric but is no address
    (``1.2.3.4.5``, ``0x1.0xfffffffff``): resolvers disagree on those.
    """
    text = host.strip().strip("[]")
    if "%" in text:
        # IPv6 zone id (fe80::1%eth0 or RFC 6874's %25eth0): the zone does
        # not change the address's class.
        text = text.split("%", 1)[0]
    text = text.rstrip(".")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if ":" in text:
        raise ValueError("not a valid IPv6 address")
    if text and _ends_in_number(text):
        legacy = _parse_ipv4_legacy(text)
        if legacy is None:
            raise ValueError("looks numeric but is not an IPv4 address")
        return legacy
    return None


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _V6_NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _V6_COMPATIBLE and int(addr) > 1:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def _range_reason(addr: Address) -> str | None:
    if isinstance(addr, ipaddress.IPv4Address):
        for v4net, reason in _V4_RANGES:
            if addr in v4net:
                return reason
        return None if addr.is_global else "reserved"
    for v6net, reason in _V6_RANGES:
        if addr in v6net:
            return reason
    return None if addr in _V6_GLOBAL_UNICAST else "reserved"


def classify_address(
    addr: Address | str, allowed: Sequence[Network] = (), *, host: str | None = None
) -> Refusal | None:
    """Why ``addr`` may not be reached, or None when it may."""
    if isinstance(addr, str):
        parsed = parse_host_address(addr)
        if parsed is None:
            raise ValueError("not an IP address")
        addr = parsed
    shown = host if host is not None else str(addr)
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        addr = ipaddress.IPv6Address(int(addr))
    judged: Address = addr
    if isinstance(addr, ipaddress.IPv6Address):
        judged = _embedded_ipv4(addr) or addr
    if addr in METADATA_ADDRESSES or judged in METADATA_ADDRESSES:
        return Refusal(shown, "metadata", str(addr))
    reason = _range_reason(judged)
    if reason is None:
        return None
    if any(judged.version == net.version and judged in net for net in allowed):
        return None
    return Refusal(shown, reason, str(addr))


def _normalise_name(host: str) -> str:
    return unicodedata.normalize("NFKC", unquote(host)).translate(_DOTS).lower().rstrip(".")


def _is_metadata_name(name: str) -> bool:
    return any(name == m or name.endswith("." + m) for m in METADATA_NAMES)


def classify_host(host: str, allowed: Sequence[Network] = ()) -> Refusal | None:
    """Refusal for a URL host without DNS: a forbidden literal or a metadata name.

    Raises ``ValueError`` when the host is numeric-looking but no address.
    """
    candidates = {host, _normalise_name(host)}
    for candidate in candidates:
        addr = parse_host_address(candidate)
        if addr is not None:
            refusal = classify_address(addr, allowed, host=host)
            if refusal is not None:
                return refusal
        elif _is_metadata_name(_normalise_name(candidate)):
            return Refusal(host, "metadata")
    return None


def check_url_literal(
    url: str, allowed: Sequence[Network] = (), *, field: str = "upstreamUrl"
) -> None:
    """Refuse ``url`` at create / PATCH when its host is forbidden (no DNS).

    Raises:
        ValidationError: not http(s), no host, user-info, or a malformed host.
        UpstreamForbidden: a forbidden literal address or a metadata name
            (422, code ``upstream_forbidden``).
    """
    if "\\" in url:
        # WHATWG parsers read "\" as "/", urlsplit does not: the two would
        # disagree about the host.
        raise ValidationError(field, "must not contain a backslash")
    try:
        parts = urlsplit(url)
        hosts = [parts.hostname or ""]
    except ValueError:
        raise ValidationError(field, "is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not hosts[0]:
        raise ValidationError(field, "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(field, "must not carry user info; store it as the credential")
    try:
        import yarl  # aiohttp's URL parser: the host the forwarder will connect to

        yarl_host = yarl.URL(url).raw_host
    except (ValueError, TypeError, UnicodeError):
        raise ValidationError(field, "is not a valid URL") from None
    if yarl_host:
        hosts.append(yarl_host)
    for host in hosts:
        try:
            refusal = classify_host(host, allowed)
        except (ValueError, UnicodeError):
            raise ValidationError(
                field, "has a numeric host that is not a valid IP address"
            ) from None
        if refusal is not None:
            raise UpstreamForbidden(refusal, field)


def check_address(
    addr: Address | str, allowed: Sequence[Network] = (), *, host: str | None = None
) -> None:
    """Refuse a resolved (or literal) address at connect time.

    Raises:
        EgressForbidden: the address is forbidden (502 ``upstream_forbidden``).
    """
    try:
        refusal = classify_address(addr, allowed, host=host)
    except ValueError:
        refusal = Refusal(host or str(addr), "unparsable", str(addr))
    if refusal is not None:
        raise EgressForbidden(refusal)


def check_connect_host(host: str, allowed: Sequence[Network] = ()) -> None:
    """The connect-time check of a URL host that aiohttp will not resolve.

    aiohttp skips the resolver for an IP literal, so the forwarder calls this
    for the URL's host (cheap: no I/O). Names are left to ``EgressResolver``,
    except metadata names, refused here already.

    Raises:
        EgressForbidden: a forbidden literal or a metadata name.
    """
    try:
        refusal = classify_host(host, allowed)
    except (ValueError, UnicodeError):
        refusal = Refusal(host, "unparsable")
    if refusal is not None:
        raise EgressForbidden(refusal)


@attrs.frozen
class EgressPolicy:
    """The allowed networks, parsed once; what the gateway and the service hold."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_setting(cls, value: str | Iterable[str] | None) -> EgressPolicy:
        return cls(parse_networks(value))

    def check_url_literal(self, url: str, *, field: str = "upstreamUrl") -> None:
        check_url_literal(url, self.allowed, field=field)

    def check_connect_host(self, host: str) -> None:
        check_connect_host(host, self.allowed)
