# shellcheck shell=sh
# vmail: point the CLI at the user's vmail-node@ daemon (installed by the
# vmail package) when systemd made its home, and at the auth group's
# client.toml when the administrator installed one; never over a setting the
# user made.
vmail_user=${USER:-$(id -un)}
if [ -z "${VMAIL_HOME:-}" ] && [ -d "/var/lib/vmail-node/$vmail_user" ]; then
    VMAIL_HOME="/var/lib/vmail-node/$vmail_user"
    export VMAIL_HOME
fi
if [ -z "${VMAIL_AUTH_CONFIG:-}" ] && [ -r /etc/vmail/client.toml ]; then
    VMAIL_AUTH_CONFIG=/etc/vmail/client.toml
    export VMAIL_AUTH_CONFIG
fi
unset vmail_user
