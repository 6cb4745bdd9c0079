//! Secrets Manager, read once per process.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use underwrite_runtime::ports::{PortError, SecretSource};

use crate::error::{code_of, unavailable};

/// Secrets Manager as a [`SecretSource`]. Each secret is fetched on first
/// use and kept for the life of the process (a Lambda cold start), so a
/// rotated key takes effect with the next cold start.
#[derive(Debug)]
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
    cache: Mutex<HashMap<String, String>>,
}

impl SecretsManager {
    /// Secrets through `client`.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        SecretsManager {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl SecretSource for SecretsManager {
    async fn secret(&self, name: &str) -> Result<String, PortError> {
        if let Some(text) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(text.clone());
        }
        let result = self.client.get_secret_value().secret_id(name).send().await;
        let output = match result {
            Ok(output) => output,
            Err(error) if code_of(&error).as_deref() == Some("ResourceNotFoundException") => {
                return Err(PortError::MissingSecret {
                    name: name.into(),
                    fix: format!(
                        "create it with `aws secretsmanager create-secret --name {name} --secret-string file://<file>` (a signing key is the key file `underwrite identity <service>` writes), or give the function's role secretsmanager:GetSecretValue on it"
                    ),
                });
            }
            Err(error) => return Err(unavailable("secretsmanager", &format!("get {name}"), error)),
        };
        let text = output
            .secret_string()
            .ok_or_else(|| PortError::MissingSecret {
                name: name.into(),
                fix: "the secret has no string value; store it with --secret-string".into(),
            })?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), text.to_string());
        Ok(text.to_string())
    }
}
