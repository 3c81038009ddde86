//! A small client for the Keycloak admin REST API, for reading ids and changing settings.

use serde_json::{Value, json};

use super::Keycloak;

pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    /// Signs in as the bootstrap admin of the master realm.
    pub async fn login(keycloak: &Keycloak) -> Admin {
        let http = reqwest::Client::new();
        let url = format!(
            "{}/realms/master/protocol/openid-connect/token",
            keycloak.url
        );
        let response: Value = http
            .post(&url)
            .form(&[
                ("grant_type", "password"),
                ("client_id", "admin-cli"),
                ("username", keycloak.admin_username.as_str()),
                ("password", keycloak.admin_password.as_str()),
            ])
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("admin sign-in to the master realm")
            .json()
            .await
            .expect("admin token response is JSON");
        let token = response["access_token"]
            .as_str()
            .expect("admin access_token")
            .to_owned();
        Admin {
            http,
            base: format!("{}/admin/realms/{}", keycloak.url, keycloak.realm),
            token,
        }
    }

    async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
            .json()
            .await
            .unwrap_or_else(|error| panic!("GET {path} returned no JSON: {error}"))
    }

    async fn put(&self, path: &str, body: &Value) {
        self.http
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|error| panic!("PUT {path}: {error}"));
    }

    /// Returns the id (`sub`) of the user `username`.
    pub async fn user_id(&self, username: &str) -> String {
        let users = self
            .get(&format!("/users?username={username}&exact=true"))
            .await;
        users[0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("user {username} not found in the realm"))
            .to_owned()
    }

    /// Returns the representation of the client `client_id`.
    pub async fn client(&self, client_id: &str) -> Value {
        let clients = self.get(&format!("/clients?clientId={client_id}")).await;
        clients[0].clone()
    }

    /// Returns the user id of the service account of `client_id`.
    pub async fn service_account_id(&self, client_id: &str) -> String {
        let uuid = self.client(client_id).await["id"]
            .as_str()
            .expect("client id")
            .to_owned();
        let user = self
            .get(&format!("/clients/{uuid}/service-account-user"))
            .await;
        user["id"]
            .as_str()
            .expect("service account user id")
            .to_owned()
    }

    /// Sets a client attribute. An empty value removes it, so the realm default applies again.
    pub async fn set_client_attribute(&self, client_id: &str, name: &str, value: &str) {
        let mut client = self.client(client_id).await;
        let uuid = client["id"].as_str().expect("client id").to_owned();
        client["attributes"][name] = json!(value);
        self.put(&format!("/clients/{uuid}"), &client).await;
    }

    /// Adds a generated RSA signing key with a priority above the realm's default key, so
    /// that new tokens are signed with it. Returns the component id.
    pub async fn add_signing_key(&self, name: &str) -> String {
        let realm = self.get("").await;
        let response = self
            .http
            .post(format!("{}/components", self.base))
            .bearer_auth(&self.token)
            .json(&json!({
                "name": name,
                "providerId": "rsa-generated",
                "providerType": "org.keycloak.keys.KeyProvider",
                "parentId": realm["id"],
                "config": {
                    "priority": ["500"],
                    "keySize": ["2048"],
                    "algorithm": ["RS256"],
                    "active": ["true"],
                    "enabled": ["true"]
                }
            }))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("create key component");
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .expect("Location header of the new component");
        location
            .rsplit('/')
            .next()
            .expect("component id")
            .to_owned()
    }

    /// Deletes a component such as a key provider.
    pub async fn delete_component(&self, id: &str) {
        self.http
            .delete(format!("{}/components/{id}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|error| panic!("DELETE component {id}: {error}"));
    }
}
