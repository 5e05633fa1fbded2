"""The fleet: one ban everywhere, through CrowdSec's Local API (LAPI; facts in the shared
``reference/crowdsec.md``). This host is a CrowdSec *machine* that pushes its bans (``push``,
through the store's outbox) and its own *bouncer* that pulls the fleet's decisions into sets of
its own nftables table (``pull``, ``block/fleet_sets``); ``link`` is the thread that runs both
beside the daemon's loop, which never waits on the network. ``lapi`` is the HTTP client,
``credentials`` reads the two files, ``alerts`` builds what is sent (pure), ``sweep`` is the
fleet-wide sweep rule."""
