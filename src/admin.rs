//! `gantry admin …`: what an operator needs before anyone can sign in to the API.

use crate::cli::AdminCommand;
use crate::config::Config;
use crate::identity::{api_keys, passwords};
use crate::startup::{Role, open_store};
use crate::store::identity::{NewApiKey, Role as TenantRole};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Wrong arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

pub async fn run(config: &Config, command: AdminCommand) -> Result<(), AdminError> {
    let store = open_store(config, Role::Api)
        .await
        .map_err(|e| AdminError::Other(e.to_string()))?
        .expect("the api role always has a database");
    let outcome = match command {
        AdminCommand::CreateUser {
            email,
            tenant,
            role,
            platform_admin,
            password_stdin,
        } => {
            create_user(
                &store,
                &email,
                &tenant,
                &role,
                platform_admin,
                password_stdin,
            )
            .await
        }
        AdminCommand::CreateKey {
            tenant,
            name,
            scopes,
            expires_in_days,
        } => create_key(&store, &tenant, &name, &scopes, expires_in_days).await,
        AdminCommand::ListTenants => {
            for t in store.all_tenants().await? {
                println!("{}\t{}\t{}", t.slug, t.id, t.name);
            }
            Ok(())
        }
    };
    store.close().await;
    outcome
}

async fn tenant_by_slug(store: &Store, slug: &str, create: bool) -> Result<String, AdminError> {
    if let Some(t) = store.tenant_by_slug(slug).await? {
        return Ok(t.id);
    }
    if !create {
        return Err(AdminError::Usage(format!("no tenant with slug '{slug}'")));
    }
    crate::api::tenants::check_slug(slug)
        .map_err(|e| AdminError::Usage(format!("--tenant {e}")))?;
    let tenant = store.create_tenant(slug, slug).await?;
    println!("created tenant '{slug}' ({})", tenant.id);
    Ok(tenant.id)
}

async fn create_user(
    store: &Store,
    email: &str,
    tenant: &str,
    role: &str,
    platform_admin: bool,
    password_stdin: bool,
) -> Result<(), AdminError> {
    let email = crate::api::users::check_email(email)
        .map_err(|e| AdminError::Usage(format!("--email {e}")))?;
    let role = TenantRole::parse(role).ok_or_else(|| {
        AdminError::Usage(format!(
            "--role must be owner, admin, member or viewer, not '{role}'"
        ))
    })?;
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| AdminError::Other(format!("cannot read the password: {e}")))?;
        (line.trim_end_matches(['\r', '\n']).to_string(), false)
    } else {
        (
            api_keys::generate().trim_start_matches("gty_").to_string(),
            true,
        )
    };
    passwords::check_policy(&password).map_err(|m| AdminError::Usage(format!("password {m}")))?;
    let hash = passwords::hash(password.clone())
        .await
        .map_err(|e| AdminError::Other(e.to_string()))?;
    let tenant_id = tenant_by_slug(store, tenant, true).await?;
    let user = match store.user_by_email(&email).await? {
        Some(user) => {
            store.set_password(&user.id, &hash).await?;
            println!("user {email} exists: password reset");
            user
        }
        None => {
            store
                .create_user(&email, "", Some(&hash), platform_admin)
                .await?
        }
    };
    store.put_member(&tenant_id, &user.id, role).await?;
    println!(
        "user {email} ({}) is {} of tenant '{tenant}'{}",
        user.id,
        role.as_str(),
        if user.platform_admin {
            ", platform administrator"
        } else {
            ""
        }
    );
    if generated {
        println!("password (shown once): {password}");
    }
    Ok(())
}

async fn create_key(
    store: &Store,
    tenant: &str,
    name: &str,
    scopes: &str,
    expires_in_days: Option<u32>,
) -> Result<(), AdminError> {
    let scopes: Vec<String> = scopes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if scopes.iter().any(|s| s == "api") {
        return Err(AdminError::Usage(
            "an api-scoped key acts for the user who creates it: create it through the API (POST /api/v1/keys) while signed in".into(),
        ));
    }
    if scopes.is_empty()
        || scopes
            .iter()
            .any(|s| !api_keys::SCOPES.contains(&s.as_str()))
    {
        return Err(AdminError::Usage(format!(
            "--scopes must be a comma-separated list of: {}",
            api_keys::SCOPES.join(", ")
        )));
    }
    let tenant_id = tenant_by_slug(store, tenant, false).await?;
    let key = api_keys::generate();
    let lifetime_ms = expires_in_days.map(|d| i64::from(d) * 86_400_000);
    let record = store
        .create_api_key(
            &tenant_id,
            NewApiKey {
                name,
                prefix: &api_keys::prefix(&key),
                key_hash: &api_keys::digest(&key),
                scopes: &scopes,
                created_by: None,
                lifetime_ms,
                policy: Default::default(),
            },
        )
        .await?;
    println!(
        "API key '{name}' ({}) for tenant '{tenant}', scopes {}",
        record.id,
        scopes.join(",")
    );
    println!("key (shown once): {key}");
    Ok(())
}
