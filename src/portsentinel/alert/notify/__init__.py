"""Notifications of first triggers: a JSON webhook and mail through the local MTA.

Off by default (WEBHOOK_URL and MAIL_TO empty). The detection loop must never wait for a
slow web server or MTA, so ``Notifier.submit`` only puts the decision in a bounded queue; one
worker thread sends (``worker``), with a timeout per attempt, a bounded number of retries with
backoff, and NOTIFY_RATE notifications per minute (``ratelimit.Throttle``); what the rate holds
back or the queue loses is summarised ("N more alerts in the last minute"), never dropped
silently. A block's notification waits (up to ``ban_wait``) for the responder to say whether
and how the ban was applied, so the receiver learns the ban's target and end too.

=============  ===================================================================
config         NotifyConfig: what the notifier needs from the settings
message        the payloads and the mail message, built from validated values only
worker         Notifier: the queue, the wait for ban outcomes, retries, summaries
webhook        one POST of a payload as JSON
mail           one message through MAIL_COMMAND
=============  ===================================================================

Nothing from the network reaches a command line: the MTA gets a fixed argv and the message
on its standard input, and the message holds only validated values (addresses, port numbers,
kinds) plus printable text; a reverse-DNS name only when it is a plain host name.

The daemon imports this package even when nothing is configured, so the web and mail
libraries (urllib.request, http.client, ssl and email weigh some 7 MiB of resident memory)
are imported only by the code that sends, when a webhook or a mail address is configured.
"""

from __future__ import annotations

from portsentinel.alert.notify.config import NotifyConfig
from portsentinel.alert.notify.message import ban_info, host_name, mail_message, summary_text
from portsentinel.alert.notify.worker import Notifier

__all__ = ["Notifier", "NotifyConfig", "ban_info", "host_name", "mail_message", "summary_text"]
