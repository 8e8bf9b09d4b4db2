"""Sender rules: the host's checks of the From addresses a sequence sends from, run when it is saved or activated.

A rule is any callable taking a :class:`~dripcore.SenderIdentity` and returning None when
it may be used, or the reason it may not (a short text; True and False are taken as a yes
and a no). :class:`AuthorizedDomains` is the built-in one. ``Drip(sender_rules=[...])``
installs them; :func:`check_senders` runs every rule on the sequence's own sender and each
step's, and raises :class:`~dripcore.errors.SenderNotAllowed` (naming the step and the
address) on the first refusal, or :class:`~dripcore.errors.SenderRuleFailed` (naming the
rule) when a rule raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ..errors import InvalidArgument, SenderNotAllowed, SenderRuleFailed
from ..model import SenderIdentity, Sequence
from .text import describe

__all__ = ["AuthorizedDomains", "SenderRule", "check_rules", "check_senders", "rule_name"]

SenderRule = Callable[[SenderIdentity], "str | bool | None"]
"""A sender rule: ``rule(sender)`` is None (or True) when ``sender`` may be used, else why not (or False)."""


class AuthorizedDomains:
    """A sender rule: the From address's domain must be one of ``domains`` (case-insensitive).

    >>> rule = AuthorizedDomains({"example.com"})
    >>> rule(SenderIdentity(from_email="hello@Example.com")) is None
    True
    >>> rule(SenderIdentity(from_email="hello@example.org"))
    "the domain 'example.org' is not authorized (authorized: example.com)"
    """

    def __init__(self, domains: Iterable[str]) -> None:
        if isinstance(domains, str) or not isinstance(domains, Iterable):
            raise InvalidArgument("domains", domains, "must be a collection of domain names, such as {'example.com'}")
        found: set[str] = set()
        for domain in domains:
            if not isinstance(domain, str) or not domain.strip() or "@" in domain or any(c.isspace() for c in domain):
                raise InvalidArgument("domains", domain, "must be a domain name, such as 'example.com'")
            found.add(domain.strip().casefold().rstrip("."))
        if not found:
            raise InvalidArgument("domains", domains, "must name at least one domain")
        self.domains = frozenset(found)

    def __call__(self, sender: SenderIdentity) -> str | None:
        """None when the From address's domain is authorized, else why not."""
        domain = sender.from_email.rpartition("@")[2].casefold().rstrip(".")
        if domain in self.domains:
            return None
        return f"the domain {domain!r} is not authorized (authorized: {', '.join(sorted(self.domains))})"

    def __repr__(self) -> str:
        return f"AuthorizedDomains({sorted(self.domains)!r})"


def rule_name(rule: Any) -> str:
    """How an error names ``rule``: its qualified name, or its repr for an instance."""
    name = getattr(rule, "__qualname__", None)
    return name if isinstance(name, str) else repr(rule)


def check_rules(rules: Any) -> tuple[SenderRule, ...]:
    """``Drip(sender_rules=...)`` as a tuple of callables, or InvalidArgument naming the bad one."""
    if rules is None:
        return ()
    if callable(rules) or isinstance(rules, str) or not isinstance(rules, Iterable):
        raise InvalidArgument("sender_rules", rules, "must be a list of rules (callables taking a SenderIdentity)")
    checked = tuple(rules)
    for rule in checked:
        if not callable(rule):
            raise InvalidArgument("sender_rules", rule, "must be a callable taking a SenderIdentity")
    return checked


def check_senders(rules: tuple[SenderRule, ...], sequence: Sequence) -> None:
    """Run every rule on ``sequence``'s sender and each step's; raise on the first refusal."""
    if not rules:
        return
    senders: list[tuple[int | None, str, SenderIdentity]] = []
    if sequence.sender is not None:
        senders.append((None, "", sequence.sender))
    senders.extend((s.position, s.name, s.sender) for s in sequence.steps if s.sender is not None)
    for position, step_name, sender in senders:
        for rule in rules:
            try:
                reason: object = rule(sender)
            except Exception as exc:
                raise SenderRuleFailed(
                    rule=rule_name(rule), sequence_id=sequence.id, position=position, error=describe(exc)
                ) from exc
            if reason is None or reason is True:
                continue
            raise SenderNotAllowed(
                sequence_id=sequence.id, position=position, step_name=step_name, address=sender.from_email,
                reason=reason if isinstance(reason, str) and reason else f"refused by {rule_name(rule)}",
            )  # fmt: skip
