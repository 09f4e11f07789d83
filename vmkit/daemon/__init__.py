"""The VM daemon: many VMs held at once, started through a fork server, steered over a REST API.

paths.py (where the socket and the VMs' state directories live), vmdir.py (one VM's state directory),
vm_process.py and control.py (the process that runs one VM, and its control socket), forkserver.py
(the warmed process that forks VM processes), registry.py (the daemon's view of its VMs), http.py and
api.py (the REST API on the daemon's Unix socket), server.py (`vmkit daemon`), client.py and
commands.py (the CLI's side: `vmkit run -d`, `ps`, `logs`, ...). docs/daemon.md describes it.
"""
