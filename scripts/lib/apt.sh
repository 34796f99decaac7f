# Sourced by scripts/setup and scripts/broker (bash): SUDO, and apt_install.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# Install Debian packages without starting any service they ship (dhcpd, sshd, rabbitmq):
# invoke-rc.d asks policy-rc.d, and 101 means "not now". Services are started by us, or never.
apt_install() {
  $SUDO apt-get update -qq
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  local rc=0
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null || rc=$?
  $SUDO rm -f /usr/sbin/policy-rc.d
  return "$rc"
}

