//! Callers signed in with the identity provider: a verified token's
//! subject mapped to a Blaze user, created on first sight when configured,
//! its role and team kept as the provider's claims say (checked once per
//! `cache_ttl` per subject). A provider user is a Blaze user like any
//! other: an admin disables them, sets their quotas and limits, and a
//! disabled user's tokens stop working at once.

use std::sync::Arc;

use super::{Authenticator, Credential, Failure, Principal};
use crate::auth::events::AuthEvent;
use crate::auth::now_ms;
use crate::auth::provider::{ExternalIdentity, Provider};
use crate::auth::secrets;
use crate::auth::store::{Role, StoreError, User, UserChanges, UserStatus};

impl Authenticator {
    /// The principal of a provider's access token.
    pub(super) async fn authenticate_external(
        &self,
        provider: &Provider,
        token: &str,
    ) -> Result<Principal, Failure> {
        // A token seen before skips its signature; its time and its key
        // (still in the provider's set) are checked on every use.
        let identity = match self.provider_verified.get(token) {
            Some(identity) if provider.in_time(identity.expires_at) && provider.holds(&identity.kid) => {
                identity
            }
            Some(identity) => {
                self.provider_verified.invalidate(token);
                let expired = !provider.in_time(identity.expires_at);
                return Err(if expired { Failure::Expired } else { Failure::Invalid });
            }
            None => {
                let identity = Arc::new(provider.verify(token).await?);
                self.provider_verified.insert(token.to_owned(), identity.clone());
                identity
            }
        };
        let user_id = self.external_user(provider, &identity).await?;
        let user = self.active_user(&user_id).await?;
        Ok(Principal {
            user_id,
            role: user.role,
            scopes: identity.scopes.clone(),
            credential: Credential::Provider {
                subject: identity.subject.clone(),
                expires_at: identity.expires_at,
            },
            limits: user.limits,
            lineage: None,
            team: user.team.clone(),
        })
    }

    /// The user a subject is: linked before, or linked now (a new user, or
    /// one with the same verified email).
    async fn external_user(
        &self,
        provider: &Provider,
        identity: &ExternalIdentity,
    ) -> Result<String, Failure> {
        if let Some(user_id) = self.external.get(&identity.external_id).await {
            return Ok(user_id);
        }
        let store_failed = |_: StoreError| Failure::StoreUnavailable;
        let linked = self.store.external_user(identity.external_id.clone()).await.map_err(store_failed)?;
        let user_id = match linked {
            Some(user_id) => {
                self.follow_claims(provider, &user_id, identity).await?;
                user_id
            }
            None => self.first_sight(provider, identity).await?,
        };
        self.external.insert(identity.external_id.clone(), user_id.clone()).await;
        Ok(user_id)
    }

    async fn first_sight(&self, provider: &Provider, identity: &ExternalIdentity) -> Result<String, Failure> {
        let store_failed = |_: StoreError| Failure::StoreUnavailable;
        let email =
            identity.email.clone().unwrap_or_else(|| format!("{}@provider.invalid", identity.subject));
        let user_id = match self.store.user_by_email(email.clone()).await.map_err(store_failed)? {
            // Only a verified email may claim an existing account.
            Some(user) if identity.email_verified => user.id,
            Some(_) => {
                tracing::warn!(
                    email,
                    "a provider subject names an existing user's unverified email; refused"
                );
                return Err(Failure::Invalid);
            }
            None if !provider.config().create_users => return Err(Failure::Unknown),
            None => {
                let now = now_ms();
                let user = User {
                    id: secrets::random_id().ok_or(Failure::StoreUnavailable)?,
                    email,
                    name: identity.name.clone().unwrap_or_default(),
                    role: if identity.admin { Role::Admin } else { Role::User },
                    status: UserStatus::Active,
                    password_hash: None,
                    created_at: now,
                    updated_at: now,
                    limits: Default::default(),
                    team: identity.team.clone(),
                };
                self.store.create_user(user.clone()).await.map_err(store_failed)?;
                tracing::info!(
                    user_id = user.id,
                    issuer = provider.issuer(),
                    "a provider user signed in first"
                );
                user.id
            }
        };
        match self.store.link_external(identity.external_id.clone(), user_id.clone(), now_ms()).await {
            Ok(()) => Ok(user_id),
            // Another replica linked it meanwhile: theirs stands.
            Err(StoreError::Conflict(_)) => self
                .store
                .external_user(identity.external_id.clone())
                .await
                .map_err(store_failed)?
                .ok_or(Failure::StoreUnavailable),
            Err(_) => Err(Failure::StoreUnavailable),
        }
    }

    /// The role (and the team, when the provider sets teams) as the claims
    /// say now.
    async fn follow_claims(
        &self,
        provider: &Provider,
        user_id: &str,
        identity: &ExternalIdentity,
    ) -> Result<(), Failure> {
        let user: Arc<User> = self.active_user(user_id).await?;
        let role = if identity.admin { Role::Admin } else { Role::User };
        let team = (!provider.config().claims.team.is_empty()).then(|| identity.team.clone());
        let team_changes = team.as_ref().is_some_and(|team| *team != user.team);
        if user.role == role && !team_changes {
            return Ok(());
        }
        let changes =
            UserChanges { role: Some(role), team: team.filter(|_| team_changes), ..Default::default() };
        self.store
            .update_user(user_id.to_owned(), changes, now_ms())
            .await
            .map_err(|_| Failure::StoreUnavailable)?;
        self.announce(AuthEvent::UserChanged { id: user_id.to_owned() }).await;
        Ok(())
    }
}
