# A stand-in DHCP host: Debian with isc-dhcp-server (dhcpd) and openssh-server.
FROM debian:bookworm-slim
RUN apt-get update -qq \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get install -y -qq --no-install-recommends isc-dhcp-server openssh-server util-linux \
 && rm -f /usr/sbin/policy-rc.d && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/sshd /var/lib/dhcp && touch /var/lib/dhcp/dhcpd.leases
COPY deploy/compose/host-entrypoint.sh /usr/local/bin/host-entrypoint
COPY deploy/compose/restart-dhcpd.sh /usr/local/bin/restart-dhcpd
RUN chmod +x /usr/local/bin/host-entrypoint /usr/local/bin/restart-dhcpd
EXPOSE 22
ENTRYPOINT ["/usr/local/bin/host-entrypoint"]
