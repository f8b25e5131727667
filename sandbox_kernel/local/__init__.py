"""The local sandbox backend (bubblewrap + cgroups)."""
