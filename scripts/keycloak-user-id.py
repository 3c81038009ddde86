#!/usr/bin/env python3
"""Prints the Keycloak user id (the tokens' `sub`) of a user of the local test realm.

Reads the settings that `scripts/keycloak.sh start` writes to `.run/keycloak/env` from the
environment and signs in as the realm's bootstrap admin.

    scripts/keycloak-user-id.py alice
"""

import json
import os
import sys
import urllib.parse
import urllib.request


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: keycloak-user-id.py USERNAME", file=sys.stderr)
        return 2
    username = sys.argv[1]
    try:
        base = os.environ["KEYCLOAK_URL"]
        realm = os.environ["KEYCLOAK_REALM"]
        admin_username = os.environ["KEYCLOAK_ADMIN_USERNAME"]
        admin_password = os.environ["KEYCLOAK_ADMIN_PASSWORD"]
    except KeyError as missing:
        print(
            f"{missing.args[0]} is not set: source .run/keycloak/env after "
            "`scripts/keycloak.sh start`",
            file=sys.stderr,
        )
        return 2
    form = urllib.parse.urlencode(
        {
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": admin_username,
            "password": admin_password,
        }
    ).encode()
    token_url = f"{base}/realms/master/protocol/openid-connect/token"
    with urllib.request.urlopen(token_url, form, timeout=10) as response:
        token = json.load(response)["access_token"]
    query = urllib.parse.urlencode({"username": username, "exact": "true"})
    request = urllib.request.Request(
        f"{base}/admin/realms/{realm}/users?{query}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        users = json.load(response)
    if not users:
        print(f"user {username!r} not found in realm {realm}", file=sys.stderr)
        return 1
    print(users[0]["id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
