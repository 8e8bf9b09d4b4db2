"""Mail senders that ship with dripcore: implementations of :class:`~dripcore.ports.MailSender`.

- :class:`~dripcore.senders.smtp.SMTPSender` sends over SMTP with the standard
  library (any relay, local MTA or provider that speaks SMTP).

The fakes for tests (``RecordingSender``, ``FlakySender``, ``NullSender``)
live in :mod:`dripcore.testing`.
"""

from .smtp import SMTPSender, message_id

__all__ = ["SMTPSender", "message_id"]
