//! Zero Trust private networking (teamnet): virtual networks and the routes
//! that send an address range through a tunnel.

use reqwest::Method;

use super::client::Call;
use super::{
    CloudflareClient, Error, NewRoute, NewVirtualNetwork, PER_PAGE, Route, RouteFilter,
    VirtualNetwork,
};

impl CloudflareClient {
    /// The account's virtual networks that are not deleted (the API answers
    /// them in one page).
    pub async fn list_virtual_networks(
        &self,
        account_id: &str,
    ) -> Result<Vec<VirtualNetwork>, Error> {
        let segments = ["accounts", account_id, "teamnet", "virtual_networks"];
        let networks: Vec<VirtualNetwork> = self
            .call(Call::new(Method::GET, &segments).query("is_deleted", "false"))
            .await?
            .result;
        Ok(networks
            .into_iter()
            .filter(|network| network.deleted_at.is_none())
            .collect())
    }

    pub async fn create_virtual_network(
        &self,
        account_id: &str,
        vnet: &NewVirtualNetwork,
    ) -> Result<VirtualNetwork, Error> {
        let segments = ["accounts", account_id, "teamnet", "virtual_networks"];
        self.write(Method::POST, &segments, vnet).await
    }

    /// Sets name, comment and default flag (PATCH).
    pub async fn update_virtual_network(
        &self,
        account_id: &str,
        vnet_id: &str,
        vnet: &NewVirtualNetwork,
    ) -> Result<VirtualNetwork, Error> {
        self.write(Method::PATCH, &virtual_network(account_id, vnet_id), vnet)
            .await
    }

    /// Already gone is `Ok`. The API refuses while routes use the network.
    pub async fn delete_virtual_network(
        &self,
        account_id: &str,
        vnet_id: &str,
    ) -> Result<(), Error> {
        self.delete(&virtual_network(account_id, vnet_id)).await
    }

    /// Every route that passes `filter` and is not deleted, all pages.
    pub async fn list_routes(
        &self,
        account_id: &str,
        filter: &RouteFilter,
    ) -> Result<Vec<Route>, Error> {
        let segments = ["accounts", account_id, "teamnet", "routes"];
        let routes: Vec<Route> = self
            .list_all(
                Call::new(Method::GET, &segments)
                    .query_opt("tunnel_id", filter.tunnel_id.as_ref())
                    .query_opt("comment", filter.comment.as_ref())
                    .query_opt("virtual_network_id", filter.virtual_network_id.as_ref())
                    .query("is_deleted", "false"),
                PER_PAGE,
            )
            .await?;
        Ok(routes
            .into_iter()
            .filter(|route| route.deleted_at.is_none())
            .collect())
    }

    pub async fn create_route(&self, account_id: &str, route: &NewRoute) -> Result<Route, Error> {
        let segments = ["accounts", account_id, "teamnet", "routes"];
        self.write(Method::POST, &segments, route).await
    }

    /// Already gone is `Ok`.
    pub async fn delete_route(&self, account_id: &str, route_id: &str) -> Result<(), Error> {
        let segments = ["accounts", account_id, "teamnet", "routes", route_id];
        self.delete(&segments).await
    }
}

/// The path of one virtual network.
fn virtual_network<'a>(account_id: &'a str, vnet_id: &'a str) -> [&'a str; 5] {
    [
        "accounts",
        account_id,
        "teamnet",
        "virtual_networks",
        vnet_id,
    ]
}
