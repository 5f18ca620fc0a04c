//! The gRPC face of auth: `Auth`, `Accounts` and `Rules`. It checks who may do what (admins of the namespace for
//! changes) and runs password hashing off the async workers.

use super::{Auth, Caller};
use micro_core::proto::auth::{
    ChangeSecretRequest, ChangeSecretResponse, CreateRequest, CreateResponse, DeleteAccountRequest,
    DeleteAccountResponse, DeleteRequest, DeleteResponse, GenerateRequest, GenerateResponse, InspectRequest,
    InspectResponse, ListAccountsRequest, ListAccountsResponse, ListRequest, ListResponse, Options, RevokeRequest,
    RevokeResponse, TokenRequest, TokenResponse, accounts_server, auth_server, rules_server,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The auth services over one [`Auth`].
#[derive(Clone)]
pub struct AuthService {
    auth: Arc<Auth>,
}

impl AuthService {
    /// Serves `auth`.
    pub fn new(auth: Arc<Auth>) -> Self {
        Self { auth }
    }

    /// The three gRPC services.
    pub fn servers(
        &self,
    ) -> (auth_server::AuthServer<Self>, accounts_server::AccountsServer<Self>, rules_server::RulesServer<Self>) {
        (
            auth_server::AuthServer::new(self.clone()),
            accounts_server::AccountsServer::new(self.clone()),
            rules_server::RulesServer::new(self.clone()),
        )
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Auth) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let auth = self.auth.clone();
        tokio::task::spawn_blocking(move || f(&auth)).await.map_err(|e| Status::internal(e.to_string()))?
    }
}

/// The namespace a request acts on: its options, else the caller's.
fn namespace(options: Option<&Options>, caller: &Caller) -> Result<String, Status> {
    let ns = options
        .map(|o| o.namespace.clone())
        .filter(|n| !n.is_empty())
        .or_else(|| Some(caller.namespace.clone()).filter(|n| !n.is_empty()))
        .unwrap_or_else(|| micro_core::DEFAULT_NAMESPACE.to_string());
    micro_core::namespace::validate(&ns)?;
    Ok(ns)
}

#[tonic::async_trait]
impl auth_server::Auth for AuthService {
    async fn generate(&self, req: Request<GenerateRequest>) -> Result<Response<GenerateResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(r.options.as_ref(), &caller)?;
        caller.require_admin(&ns)?;
        let account = self
            .blocking(move |auth| auth.create_account(&ns, &r.id, &r.name, &r.r#type, r.scopes, r.metadata, &r.secret))
            .await?;
        Ok(Response::new(GenerateResponse { account: Some(account) }))
    }

    async fn inspect(&self, req: Request<InspectRequest>) -> Result<Response<InspectResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let me = caller
            .account
            .as_ref()
            .ok_or_else(|| Status::unauthenticated("inspecting a token needs an account: log in first"))?;
        let account = self.auth.verify(&r.token).map_err(|e| Status::invalid_argument(e.message().to_string()))?;
        // Your own token, or a token of a namespace you administer: nobody learns whose another token is.
        let own = me.id == account.id && me.issuer == account.issuer;
        if !own && !me.administers(&account.issuer) {
            return Err(Status::permission_denied(
                "you may inspect only your own tokens, or those of a namespace you administer",
            ));
        }
        let message =
            self.auth.account(&account.issuer, &account.id).ok_or_else(|| Status::not_found("Account not found"))?;
        Ok(Response::new(InspectResponse { account: Some(message) }))
    }

    async fn revoke(&self, req: Request<RevokeRequest>) -> Result<Response<RevokeResponse>, Status> {
        let token = req.into_inner().refresh_token;
        if token.trim().is_empty() {
            return Err(Status::invalid_argument("refresh_token is required"));
        }
        self.blocking(move |auth| auth.revoke(&token)).await?;
        Ok(Response::new(RevokeResponse {}))
    }

    async fn token(&self, req: Request<TokenRequest>) -> Result<Response<TokenResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(r.options.as_ref(), &caller)?;
        let expiry = (r.token_expiry > 0).then(|| Duration::from_secs(r.token_expiry as u64));
        let token = if !r.refresh_token.is_empty() {
            self.blocking(move |auth| auth.refresh(&r.refresh_token, expiry)).await?
        } else if !r.id.is_empty() {
            let source = super::Source { ip: caller.remote };
            self.blocking(move |auth| auth.login_from(&ns, &r.id, &r.secret, expiry, source)).await?
        } else {
            return Err(Status::invalid_argument("Credentials or a refresh token required"));
        };
        Ok(Response::new(TokenResponse { token: Some(token) }))
    }
}

#[tonic::async_trait]
impl accounts_server::Accounts for AuthService {
    async fn list(&self, req: Request<ListAccountsRequest>) -> Result<Response<ListAccountsResponse>, Status> {
        let caller = Caller::of(&req);
        let ns = namespace(req.get_ref().options.as_ref(), &caller)?;
        caller.require_admin(&ns)?;
        Ok(Response::new(ListAccountsResponse { accounts: self.auth.accounts(&ns) }))
    }

    async fn delete(&self, req: Request<DeleteAccountRequest>) -> Result<Response<DeleteAccountResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(r.options.as_ref(), &caller)?;
        let me = caller.require_admin(&ns)?;
        if r.id.is_empty() {
            return Err(Status::invalid_argument("Missing ID"));
        }
        if me.id == r.id && me.issuer == ns {
            return Err(Status::invalid_argument("Can't delete your own account"));
        }
        self.blocking(move |auth| auth.delete_account(&ns, &r.id)).await?;
        Ok(Response::new(DeleteAccountResponse {}))
    }

    async fn change_secret(&self, req: Request<ChangeSecretRequest>) -> Result<Response<ChangeSecretResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(r.options.as_ref(), &caller)?;
        let me = caller.require_member(&ns)?;
        let own = me.id == r.id && me.issuer == ns;
        if !own && !me.administers(&ns) {
            return Err(Status::permission_denied("only administrators can change another account's secret"));
        }
        let trusted = !own;
        self.blocking(move |auth| auth.change_secret(&ns, &r.id, &r.old_secret, &r.new_secret, trusted)).await?;
        Ok(Response::new(ChangeSecretResponse {}))
    }
}

#[tonic::async_trait]
impl rules_server::Rules for AuthService {
    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(r.options.as_ref(), &caller)?;
        caller.require_admin(&ns)?;
        let rule = r.rule.ok_or_else(|| Status::invalid_argument("Rule missing"))?;
        self.blocking(move |auth| auth.create_rule(&ns, rule)).await?;
        Ok(Response::new(CreateResponse {}))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let ns = namespace(r.options.as_ref(), &caller)?;
        caller.require_admin(&ns)?;
        self.blocking(move |auth| auth.delete_rule(&ns, &r.id)).await?;
        Ok(Response::new(DeleteResponse {}))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let caller = Caller::of(&req);
        let ns = namespace(req.get_ref().options.as_ref(), &caller)?;
        caller.require_member(&ns)?;
        Ok(Response::new(ListResponse { rules: self.auth.rules_of(&ns) }))
    }
}
