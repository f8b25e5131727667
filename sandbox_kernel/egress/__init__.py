"""Controlled egress: a sandbox reaches the hosts its operator allows, through a proxy, and
nothing else (issue 10).

- :mod:`.policy`: the allow list as pure functions (entries, matching, forbidden addresses,
  ``%sandbox allow``/``deny`` narrowing, the TLS ClientHello's server name);
- :mod:`.plugin`: proxy.py plugins that enforce it (names, addresses after resolving, SNI, Host);
- :mod:`.runner`: one sandbox's proxy.py process on a Unix socket;
- :mod:`.relay`: inside the sandbox, 127.0.0.1:3128 -> that socket;
- :mod:`.host`: the local backend's side (settings ``EgressProxy.*``, start/stop, bwrap options,
  ``%sandbox network``).

Nothing here runs when ``Sandbox.allow_hosts`` is empty (the default): deny-all as before.
"""
