#!/bin/sh
# Restart dhcpd in the container: stop the running one, start it again with the live config.
# (On a real host this is `systemctl restart isc-dhcp-server`.)
set -eu
if [ -f /run/dhcpd.pid ]; then kill "$(cat /run/dhcpd.pid)" 2>/dev/null || true; fi
exec /usr/sbin/dhcpd -4 -q -cf /etc/dhcp/dhcpd.conf -pf /run/dhcpd.pid -lf /var/lib/dhcp/dhcpd.leases
