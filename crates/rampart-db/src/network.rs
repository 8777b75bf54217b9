//! Tenant networks: VPCs, subnets, security groups and their rules, ports (with their groups
//! and node binding), segmentation policies, floating IPs, and the data-plane status agents
//! report. Rows come back as the model types of `rampart_api::network::model`, which the controller
//! validates and the agents compile; this module only stores them.
//!
//! Every query that reads a project's objects filters on `project_id`, so an id from another
//! project is simply not found.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use rampart_api::agent::network::PortDevice;
use rampart_api::network::model::{
    Action, AddressPair, Direction, FloatingIp, MacAddr, Port, PortRange, Protocol, SecurityGroup, SecurityGroupRule,
    SegmentationPolicy, Subnet, TagSelector, Vpc,
};
use rampart_common::time::{from_ms, to_ms};
use sqlx::AnyConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::identity::conflict_on_unique;
use crate::{DbError, Result, uuid_col};

fn parse<T: FromStr>(what: &str, s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| DbError::Corrupt(format!("{what} {s:?} does not parse")))
}

fn json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|_| DbError::Corrupt(format!("{what} is not valid JSON")))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("network values serialise")
}

fn protocol(s: &str) -> Result<Protocol> {
    parse("protocol", s)
}

// ---------------------------------------------------------------------------------------------
// VPCs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VpcRow {
    pub vpc: Vpc,
    pub router_external_ip: Option<Ipv4Addr>,
    pub created_at: OffsetDateTime,
}

type VpcTuple = (String, String, String, String, Option<String>, i64);

fn vpc_row(r: VpcTuple) -> Result<VpcRow> {
    Ok(VpcRow {
        vpc: Vpc {
            id: uuid_col(&r.0)?,
            project: uuid_col(&r.1)?,
            name: r.2,
            cidr: parse("cidr", &r.3)?,
        },
        router_external_ip: r.4.as_deref().map(|s| parse("address", s)).transpose()?,
        created_at: from_ms(r.5),
    })
}

macro_rules! vpc_columns {
    () => {
        "id, project_id, name, cidr, router_external_ip, created_at"
    };
}

pub async fn insert_vpc(
    conn: &mut AnyConnection,
    vpc: &Vpc,
    router_external_ip: Option<Ipv4Addr>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vpcs (id, project_id, name, cidr, router_external_ip, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(vpc.id.to_string())
    .bind(vpc.project.to_string())
    .bind(&vpc.name)
    .bind(vpc.cidr.to_string())
    .bind(router_external_ip.map(|a| a.to_string()))
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a VPC named {:?} already exists in this project", vpc.name)))?;
    Ok(())
}

pub async fn get_vpc(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<VpcRow>> {
    let r: Option<VpcTuple> = sqlx::query_as(concat!(
        "SELECT ",
        vpc_columns!(),
        " FROM vpcs WHERE id = $1 AND project_id = $2"
    ))
    .bind(id.to_string())
    .bind(project.to_string())
    .fetch_optional(conn)
    .await?;
    r.map(vpc_row).transpose()
}

pub async fn vpc_by_id(conn: &mut AnyConnection, id: Uuid) -> Result<Option<VpcRow>> {
    let r: Option<VpcTuple> = sqlx::query_as(concat!("SELECT ", vpc_columns!(), " FROM vpcs WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    r.map(vpc_row).transpose()
}

/// VPCs of a project ordered by name, after the name `after`.
pub async fn list_vpcs(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<VpcRow>> {
    let rows: Vec<VpcTuple> = sqlx::query_as(concat!(
        "SELECT ",
        vpc_columns!(),
        " FROM vpcs WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3"
    ))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(vpc_row).collect()
}

pub async fn set_router_external_ip(
    conn: &mut AnyConnection,
    id: Uuid,
    ip: Option<Ipv4Addr>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("UPDATE vpcs SET router_external_ip = $1, updated_at = $2 WHERE id = $3")
        .bind(ip.map(|a| a.to_string()))
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, "that external address is taken".into()))?;
    Ok(())
}

/// Deletes a VPC and its subnets; refuses (409) while it has ports.
pub async fn delete_vpc(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    let ports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ports WHERE vpc_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    if ports > 0 {
        return Err(DbError::Conflict(format!(
            "the VPC still has {ports} port(s); delete them first"
        )));
    }
    sqlx::query("DELETE FROM subnets WHERE vpc_id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM vpcs WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

/// Addresses of the external pool in use: router addresses and floating IPs.
pub async fn external_addresses_in_use(conn: &mut AnyConnection) -> Result<BTreeSet<Ipv4Addr>> {
    let routers: Vec<String> =
        sqlx::query_scalar("SELECT router_external_ip FROM vpcs WHERE router_external_ip IS NOT NULL")
            .fetch_all(&mut *conn)
            .await?;
    let fips: Vec<String> = sqlx::query_scalar("SELECT address FROM floating_ips")
        .fetch_all(conn)
        .await?;
    routers.iter().chain(fips.iter()).map(|s| parse("address", s)).collect()
}

// ---------------------------------------------------------------------------------------------
// Subnets
// ---------------------------------------------------------------------------------------------

type SubnetTuple = (String, String, String, String, String, i64, i64);

fn subnet_row(r: SubnetTuple) -> Result<Subnet> {
    Ok(Subnet {
        id: uuid_col(&r.0)?,
        vpc: uuid_col(&r.1)?,
        name: r.2,
        cidr: parse("cidr", &r.3)?,
        gateway: parse("gateway", &r.4)?,
        dhcp: r.5 != 0,
        segment_id: u32::try_from(r.6).map_err(|_| DbError::Corrupt("segment id".into()))?,
    })
}

macro_rules! subnet_columns {
    () => {
        "id, vpc_id, name, cidr, gateway, dhcp, segment_id"
    };
}

pub async fn insert_subnet(conn: &mut AnyConnection, project: Uuid, s: &Subnet, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO subnets (id, project_id, vpc_id, name, cidr, gateway, dhcp, segment_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(s.id.to_string())
    .bind(project.to_string())
    .bind(s.vpc.to_string())
    .bind(&s.name)
    .bind(s.cidr.to_string())
    .bind(s.gateway.to_string())
    .bind(i64::from(s.dhcp))
    .bind(i64::from(s.segment_id))
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a subnet named {:?} already exists in this VPC", s.name)))?;
    Ok(())
}

pub async fn get_subnet(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<Subnet>> {
    let r: Option<SubnetTuple> = sqlx::query_as(concat!(
        "SELECT ",
        subnet_columns!(),
        " FROM subnets WHERE id = $1 AND project_id = $2"
    ))
    .bind(id.to_string())
    .bind(project.to_string())
    .fetch_optional(conn)
    .await?;
    r.map(subnet_row).transpose()
}

pub async fn subnets_of_vpc(conn: &mut AnyConnection, vpc: Uuid) -> Result<Vec<Subnet>> {
    let rows: Vec<SubnetTuple> = sqlx::query_as(concat!(
        "SELECT ",
        subnet_columns!(),
        " FROM subnets WHERE vpc_id = $1 ORDER BY id"
    ))
    .bind(vpc.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(subnet_row).collect()
}

/// Subnets of a project (optionally of one VPC) ordered by id, after `after`.
pub async fn list_subnets(
    conn: &mut AnyConnection,
    project: Uuid,
    vpc: Option<Uuid>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Subnet>> {
    let rows: Vec<SubnetTuple> = sqlx::query_as(concat!(
        "SELECT ",
        subnet_columns!(),
        " FROM subnets WHERE project_id = $1 AND ($2 = '' OR vpc_id = $2) AND id > $3 \
         ORDER BY id LIMIT $4"
    ))
    .bind(project.to_string())
    .bind(vpc.map(|v| v.to_string()).unwrap_or_default())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(subnet_row).collect()
}

pub async fn segment_ids(conn: &mut AnyConnection) -> Result<BTreeSet<u32>> {
    let v: Vec<i64> = sqlx::query_scalar("SELECT segment_id FROM subnets")
        .fetch_all(conn)
        .await?;
    Ok(v.into_iter().filter_map(|x| u32::try_from(x).ok()).collect())
}

/// Deletes a subnet; refuses (409) while it has ports.
pub async fn delete_subnet(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    let ports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ports WHERE subnet_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    if ports > 0 {
        return Err(DbError::Conflict(format!(
            "the subnet still has {ports} port(s); delete them first"
        )));
    }
    sqlx::query("DELETE FROM subnets WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Security groups
// ---------------------------------------------------------------------------------------------

type RuleTuple = (
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn rule_row(r: RuleTuple) -> Result<(Uuid, SecurityGroupRule)> {
    let port = |p: Option<i64>| -> Result<Option<u16>> {
        p.map(|x| u16::try_from(x).map_err(|_| DbError::Corrupt("rule port".into())))
            .transpose()
    };
    Ok((
        uuid_col(&r.1)?,
        SecurityGroupRule {
            id: uuid_col(&r.0)?,
            direction: match r.2.as_str() {
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                other => return Err(DbError::Corrupt(format!("rule direction {other:?}"))),
            },
            protocol: protocol(&r.3)?,
            port_min: port(r.4)?,
            port_max: port(r.5)?,
            remote_cidr: r.6.as_deref().map(|s| parse::<Ipv4Net>("remote_cidr", s)).transpose()?,
            remote_group: r.7.as_deref().map(uuid_col).transpose()?,
        },
    ))
}

macro_rules! rule_columns {
    () => {
        "r.id, r.group_id, r.direction, r.protocol, r.port_min, r.port_max, r.remote_cidr, r.remote_group_id"
    };
}

async fn insert_rule_at(
    conn: &mut AnyConnection,
    group: Uuid,
    position: i64,
    r: &SecurityGroupRule,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO security_group_rules (id, group_id, position, direction, protocol, port_min, port_max, \
         remote_cidr, remote_group_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(r.id.to_string())
    .bind(group.to_string())
    .bind(position)
    .bind(match r.direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    })
    .bind(r.protocol.as_str())
    .bind(r.port_min.map(i64::from))
    .bind(r.port_max.map(i64::from))
    .bind(r.remote_cidr.map(|c| c.to_string()))
    .bind(r.remote_group.map(|g| g.to_string()))
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts a group with its (default) rules, in order.
pub async fn insert_group(
    conn: &mut AnyConnection,
    project: Uuid,
    g: &SecurityGroup,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO security_groups (id, project_id, name, description, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5)",
    )
    .bind(g.id.to_string())
    .bind(project.to_string())
    .bind(&g.name)
    .bind(&g.description)
    .bind(to_ms(now))
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        conflict_on_unique(
            e,
            format!("a security group named {:?} already exists in this project", g.name),
        )
    })?;
    for (i, r) in g.rules.iter().enumerate() {
        insert_rule_at(conn, g.id, i as i64 + 1, r, now).await?;
    }
    Ok(())
}

/// Appends a rule to a group (after its last rule).
pub async fn insert_rule(
    conn: &mut AnyConnection,
    group: Uuid,
    r: &SecurityGroupRule,
    now: OffsetDateTime,
) -> Result<()> {
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(position) FROM security_group_rules WHERE group_id = $1")
        .bind(group.to_string())
        .fetch_one(&mut *conn)
        .await?;
    insert_rule_at(&mut *conn, group, last.unwrap_or(0) + 1, r, now).await?;
    touch_group(conn, group, now).await
}

async fn touch_group(conn: &mut AnyConnection, group: Uuid, now: OffsetDateTime) -> Result<()> {
    sqlx::query("UPDATE security_groups SET updated_at = $1 WHERE id = $2")
        .bind(to_ms(now))
        .bind(group.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn delete_rule(conn: &mut AnyConnection, group: Uuid, rule: Uuid, now: OffsetDateTime) -> Result<bool> {
    let r = sqlx::query("DELETE FROM security_group_rules WHERE id = $1 AND group_id = $2")
        .bind(rule.to_string())
        .bind(group.to_string())
        .execute(&mut *conn)
        .await?;
    touch_group(conn, group, now).await?;
    Ok(r.rows_affected() == 1)
}

type GroupTuple = (String, String, String);

/// Groups of a project by id with their rules in order; `ids` None means all of them.
pub async fn groups(
    conn: &mut AnyConnection,
    project: Uuid,
    ids: Option<&BTreeSet<Uuid>>,
) -> Result<Vec<SecurityGroup>> {
    let rows: Vec<GroupTuple> =
        sqlx::query_as("SELECT id, name, description FROM security_groups WHERE project_id = $1 ORDER BY id")
            .bind(project.to_string())
            .fetch_all(&mut *conn)
            .await?;
    let rules: Vec<RuleTuple> = sqlx::query_as(concat!(
        "SELECT ",
        rule_columns!(),
        " FROM security_group_rules r JOIN security_groups g ON g.id = r.group_id \
         WHERE g.project_id = $1 ORDER BY r.group_id, r.position"
    ))
    .bind(project.to_string())
    .fetch_all(conn)
    .await?;
    let mut by_group: BTreeMap<Uuid, Vec<SecurityGroupRule>> = BTreeMap::new();
    for r in rules {
        let (g, rule) = rule_row(r)?;
        by_group.entry(g).or_default().push(rule);
    }
    let mut out = Vec::new();
    for (id, name, description) in rows {
        let id = uuid_col(&id)?;
        if ids.is_some_and(|s| !s.contains(&id)) {
            continue;
        }
        out.push(SecurityGroup {
            id,
            name,
            description,
            rules: by_group.remove(&id).unwrap_or_default(),
        });
    }
    Ok(out)
}

pub async fn get_group(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<SecurityGroup>> {
    let row: Option<GroupTuple> =
        sqlx::query_as("SELECT id, name, description FROM security_groups WHERE id = $1 AND project_id = $2")
            .bind(id.to_string())
            .bind(project.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let Some((_, name, description)) = row else {
        return Ok(None);
    };
    let rules: Vec<RuleTuple> = sqlx::query_as(concat!(
        "SELECT ",
        rule_columns!(),
        " FROM security_group_rules r WHERE r.group_id = $1 ORDER BY r.position"
    ))
    .bind(id.to_string())
    .fetch_all(conn)
    .await?;
    Ok(Some(SecurityGroup {
        id,
        name,
        description,
        rules: rules
            .into_iter()
            .map(|r| rule_row(r).map(|x| x.1))
            .collect::<Result<_>>()?,
    }))
}

/// Group names of a project ordered by name, after `after`, with their rules.
pub async fn list_groups(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<SecurityGroup>> {
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM security_groups WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3")
            .bind(project.to_string())
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(&mut *conn)
            .await?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(g) = get_group(conn, project, uuid_col(&id)?).await? {
            out.push(g);
        }
    }
    Ok(out)
}

/// Ids of the project's groups (to validate references).
pub async fn group_ids(conn: &mut AnyConnection, project: Uuid) -> Result<BTreeSet<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM security_groups WHERE project_id = $1")
        .bind(project.to_string())
        .fetch_all(conn)
        .await?;
    ids.iter().map(|s| uuid_col(s)).collect()
}

pub async fn update_group(
    conn: &mut AnyConnection,
    id: Uuid,
    name: &str,
    description: &str,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("UPDATE security_groups SET name = $1, description = $2, updated_at = $3 WHERE id = $4")
        .bind(name)
        .bind(description)
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await
        .map_err(|e| {
            conflict_on_unique(
                e,
                format!("a security group named {name:?} already exists in this project"),
            )
        })?;
    Ok(())
}

/// Deletes a group; refuses (409) while a port is in it or another group's rule names it.
pub async fn delete_group(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    let ports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM port_security_groups WHERE group_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    if ports > 0 {
        return Err(DbError::Conflict(format!(
            "{ports} port(s) are still in this security group"
        )));
    }
    let refs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM security_group_rules WHERE remote_group_id = $1 AND group_id <> $1")
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await?;
    if refs > 0 {
        return Err(DbError::Conflict(format!(
            "{refs} rule(s) of other security groups still name this group"
        )));
    }
    sqlx::query("DELETE FROM security_group_rules WHERE group_id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM security_groups WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRow {
    pub port: Port,
    pub project: Uuid,
    pub node: Option<Uuid>,
    pub device: Option<PortDevice>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(sqlx::FromRow)]
struct PortDbRow {
    id: String,
    project_id: String,
    vpc_id: String,
    subnet_id: String,
    mac: String,
    ip: String,
    port_security: i64,
    max_connections: Option<i64>,
    tags: String,
    allowed_address_pairs: String,
    node_id: Option<String>,
    device: Option<String>,
    created_at: i64,
    updated_at: i64,
}

macro_rules! port_columns {
    () => {
        "id, project_id, vpc_id, subnet_id, mac, ip, port_security, max_connections, tags, \
     allowed_address_pairs, node_id, device, created_at, updated_at"
    };
}

/// Which ports' group memberships to read for a batch of port rows (one query).
enum GroupScope {
    Port(Uuid),
    Project(Uuid),
    Vpc(Uuid),
    Node(Uuid),
}

async fn port_rows(conn: &mut AnyConnection, rows: Vec<PortDbRow>, scope: GroupScope) -> Result<Vec<PortRow>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let ids: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let pairs: Vec<(String, String)> = match scope {
        GroupScope::Port(id) => sqlx::query_as(
            "SELECT port_id, group_id FROM port_security_groups WHERE port_id = $1 ORDER BY port_id, group_id",
        )
        .bind(id.to_string()),
        GroupScope::Project(id) => sqlx::query_as(
            "SELECT g.port_id, g.group_id FROM port_security_groups g JOIN ports p ON p.id = g.port_id \
             WHERE p.project_id = $1 ORDER BY g.port_id, g.group_id",
        )
        .bind(id.to_string()),
        GroupScope::Vpc(id) => sqlx::query_as(
            "SELECT g.port_id, g.group_id FROM port_security_groups g JOIN ports p ON p.id = g.port_id \
             WHERE p.vpc_id = $1 ORDER BY g.port_id, g.group_id",
        )
        .bind(id.to_string()),
        GroupScope::Node(id) => sqlx::query_as(
            "SELECT g.port_id, g.group_id FROM port_security_groups g JOIN ports p ON p.id = g.port_id \
             WHERE p.node_id = $1 ORDER BY g.port_id, g.group_id",
        )
        .bind(id.to_string()),
    }
    .fetch_all(&mut *conn)
    .await?;
    let mut groups: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    for (p, g) in pairs {
        if ids.contains(p.as_str()) {
            groups.entry(p).or_default().push(uuid_col(&g)?);
        }
    }
    rows.into_iter()
        .map(|r| {
            Ok(PortRow {
                port: Port {
                    id: uuid_col(&r.id)?,
                    vpc: uuid_col(&r.vpc_id)?,
                    subnet: uuid_col(&r.subnet_id)?,
                    mac: parse::<MacAddr>("mac", &r.mac)?,
                    ip: parse("ip", &r.ip)?,
                    security_groups: groups.remove(&r.id).unwrap_or_default(),
                    tags: json::<BTreeMap<String, String>>("tags", &r.tags)?,
                    allowed_address_pairs: json::<Vec<AddressPair>>("allowed_address_pairs", &r.allowed_address_pairs)?,
                    port_security: r.port_security != 0,
                    max_connections: r
                        .max_connections
                        .map(|n| u32::try_from(n).map_err(|_| DbError::Corrupt("max_connections".into())))
                        .transpose()?,
                },
                project: uuid_col(&r.project_id)?,
                node: r.node_id.as_deref().map(uuid_col).transpose()?,
                device: r.device.as_deref().map(|d| json("device", d)).transpose()?,
                created_at: from_ms(r.created_at),
                updated_at: from_ms(r.updated_at),
            })
        })
        .collect()
}

async fn set_port_groups(conn: &mut AnyConnection, port: Uuid, groups: &[Uuid]) -> Result<()> {
    sqlx::query("DELETE FROM port_security_groups WHERE port_id = $1")
        .bind(port.to_string())
        .execute(&mut *conn)
        .await?;
    for g in groups {
        sqlx::query("INSERT INTO port_security_groups (port_id, group_id) VALUES ($1, $2)")
            .bind(port.to_string())
            .bind(g.to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn insert_port(conn: &mut AnyConnection, project: Uuid, p: &Port, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "INSERT INTO ports (id, project_id, vpc_id, subnet_id, mac, ip, port_security, max_connections, tags, \
         allowed_address_pairs, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
    )
    .bind(p.id.to_string())
    .bind(project.to_string())
    .bind(p.vpc.to_string())
    .bind(p.subnet.to_string())
    .bind(p.mac.to_string())
    .bind(p.ip.to_string())
    .bind(i64::from(p.port_security))
    .bind(p.max_connections.map(i64::from))
    .bind(to_json(&p.tags))
    .bind(to_json(&p.allowed_address_pairs))
    .bind(to_ms(now))
    .execute(&mut *conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("address {} or MAC {} is already in use", p.ip, p.mac)))?;
    set_port_groups(conn, p.id, &p.security_groups).await
}

/// Stores the mutable attributes of a port (groups, tags, pairs, port security, limit).
pub async fn update_port(conn: &mut AnyConnection, p: &Port, now: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE ports SET port_security = $1, max_connections = $2, tags = $3, allowed_address_pairs = $4, \
         updated_at = $5 WHERE id = $6",
    )
    .bind(i64::from(p.port_security))
    .bind(p.max_connections.map(i64::from))
    .bind(to_json(&p.tags))
    .bind(to_json(&p.allowed_address_pairs))
    .bind(to_ms(now))
    .bind(p.id.to_string())
    .execute(&mut *conn)
    .await?;
    set_port_groups(conn, p.id, &p.security_groups).await
}

/// Plugs a port into a node (or unplugs it with `None`).
pub async fn bind_port(
    conn: &mut AnyConnection,
    id: Uuid,
    binding: Option<(Uuid, &PortDevice)>,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("UPDATE ports SET node_id = $1, device = $2, updated_at = $3 WHERE id = $4")
        .bind(binding.map(|(n, _)| n.to_string()))
        .bind(binding.map(|(_, d)| to_json(d)))
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get_port(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<PortRow>> {
    let rows: Vec<PortDbRow> = sqlx::query_as(concat!(
        "SELECT ",
        port_columns!(),
        " FROM ports WHERE id = $1 AND project_id = $2"
    ))
    .bind(id.to_string())
    .bind(project.to_string())
    .fetch_all(&mut *conn)
    .await?;
    Ok(port_rows(conn, rows, GroupScope::Port(id)).await?.pop())
}

/// Ports of a project (optionally of one VPC or subnet) ordered by id, after `after`.
pub async fn list_ports(
    conn: &mut AnyConnection,
    project: Uuid,
    vpc: Option<Uuid>,
    subnet: Option<Uuid>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<PortRow>> {
    let rows: Vec<PortDbRow> = sqlx::query_as(concat!(
        "SELECT ",
        port_columns!(),
        " FROM ports WHERE project_id = $1 AND ($2 = '' OR vpc_id = $2) \
         AND ($3 = '' OR subnet_id = $3) AND id > $4 ORDER BY id LIMIT $5"
    ))
    .bind(project.to_string())
    .bind(vpc.map(|v| v.to_string()).unwrap_or_default())
    .bind(subnet.map(|v| v.to_string()).unwrap_or_default())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    port_rows(conn, rows, GroupScope::Project(project)).await
}

/// Every port of a VPC, by id.
pub async fn ports_of_vpc(conn: &mut AnyConnection, vpc: Uuid) -> Result<Vec<PortRow>> {
    let rows: Vec<PortDbRow> = sqlx::query_as(concat!(
        "SELECT ",
        port_columns!(),
        " FROM ports WHERE vpc_id = $1 ORDER BY id"
    ))
    .bind(vpc.to_string())
    .fetch_all(&mut *conn)
    .await?;
    port_rows(conn, rows, GroupScope::Vpc(vpc)).await
}

/// Ports bound to a node, by id.
pub async fn ports_on_node(conn: &mut AnyConnection, node: Uuid) -> Result<Vec<PortRow>> {
    let rows: Vec<PortDbRow> = sqlx::query_as(concat!(
        "SELECT ",
        port_columns!(),
        " FROM ports WHERE node_id = $1 ORDER BY id"
    ))
    .bind(node.to_string())
    .fetch_all(&mut *conn)
    .await?;
    port_rows(conn, rows, GroupScope::Node(node)).await
}

/// Deletes a port and releases its floating IP association.
pub async fn delete_port(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE floating_ips SET port_id = NULL WHERE port_id = $1")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM ports WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Segmentation policies
// ---------------------------------------------------------------------------------------------

type PolicyTuple = (String, String, String, String, String, String, String);

fn policy_row(r: PolicyTuple) -> Result<SegmentationPolicy> {
    Ok(SegmentationPolicy {
        id: uuid_col(&r.0)?,
        name: r.1,
        from: json::<TagSelector>("from_selector", &r.2)?,
        to: json::<TagSelector>("to_selector", &r.3)?,
        protocol: protocol(&r.4)?,
        ports: json::<Vec<PortRange>>("ports", &r.5)?,
        action: match r.6.as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            other => return Err(DbError::Corrupt(format!("policy action {other:?}"))),
        },
    })
}

macro_rules! policy_columns {
    () => {
        "id, name, from_selector, to_selector, protocol, ports, action"
    };
}

pub async fn insert_policy(
    conn: &mut AnyConnection,
    project: Uuid,
    p: &SegmentationPolicy,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO segmentation_policies (id, project_id, name, from_selector, to_selector, protocol, ports, \
         action, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(p.id.to_string())
    .bind(project.to_string())
    .bind(&p.name)
    .bind(to_json(&p.from))
    .bind(to_json(&p.to))
    .bind(p.protocol.as_str())
    .bind(to_json(&p.ports))
    .bind(match p.action {
        Action::Allow => "allow",
        Action::Deny => "deny",
    })
    .bind(to_ms(now))
    .execute(conn)
    .await
    .map_err(|e| conflict_on_unique(e, format!("a segmentation policy named {:?} already exists", p.name)))?;
    Ok(())
}

pub async fn get_policy(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<SegmentationPolicy>> {
    let r: Option<PolicyTuple> = sqlx::query_as(concat!(
        "SELECT ",
        policy_columns!(),
        " FROM segmentation_policies WHERE id = $1 AND project_id = $2"
    ))
    .bind(id.to_string())
    .bind(project.to_string())
    .fetch_optional(conn)
    .await?;
    r.map(policy_row).transpose()
}

pub async fn list_policies(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<SegmentationPolicy>> {
    let rows: Vec<PolicyTuple> = sqlx::query_as(concat!(
        "SELECT ",
        policy_columns!(),
        " FROM segmentation_policies WHERE project_id = $1 AND name > $2 ORDER BY name LIMIT $3"
    ))
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(policy_row).collect()
}

/// All policies of a project, by id.
pub async fn policies_of_project(conn: &mut AnyConnection, project: Uuid) -> Result<Vec<SegmentationPolicy>> {
    let rows: Vec<PolicyTuple> = sqlx::query_as(concat!(
        "SELECT ",
        policy_columns!(),
        " FROM segmentation_policies WHERE project_id = $1 ORDER BY id"
    ))
    .bind(project.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(policy_row).collect()
}

pub async fn delete_policy(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM segmentation_policies WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Floating IPs
// ---------------------------------------------------------------------------------------------

type FipTuple = (String, String, Option<String>);

fn fip_row(r: FipTuple) -> Result<FloatingIp> {
    Ok(FloatingIp {
        id: uuid_col(&r.0)?,
        address: parse("address", &r.1)?,
        port: r.2.as_deref().map(uuid_col).transpose()?,
    })
}

pub async fn insert_floating_ip(
    conn: &mut AnyConnection,
    project: Uuid,
    f: &FloatingIp,
    now: OffsetDateTime,
) -> Result<()> {
    sqlx::query("INSERT INTO floating_ips (id, project_id, address, port_id, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(f.id.to_string())
        .bind(project.to_string())
        .bind(f.address.to_string())
        .bind(f.port.map(|p| p.to_string()))
        .bind(to_ms(now))
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, "the address or the port already has a floating IP".into()))?;
    Ok(())
}

pub async fn get_floating_ip(conn: &mut AnyConnection, project: Uuid, id: Uuid) -> Result<Option<FloatingIp>> {
    let r: Option<FipTuple> =
        sqlx::query_as("SELECT id, address, port_id FROM floating_ips WHERE id = $1 AND project_id = $2")
            .bind(id.to_string())
            .bind(project.to_string())
            .fetch_optional(conn)
            .await?;
    r.map(fip_row).transpose()
}

pub async fn list_floating_ips(
    conn: &mut AnyConnection,
    project: Uuid,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<FloatingIp>> {
    let rows: Vec<FipTuple> = sqlx::query_as(
        "SELECT id, address, port_id FROM floating_ips WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(project.to_string())
    .bind(after.unwrap_or(""))
    .bind(i64::from(limit))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(fip_row).collect()
}

/// Floating IPs associated with ports of a VPC, by id.
pub async fn floating_ips_of_vpc(conn: &mut AnyConnection, vpc: Uuid) -> Result<Vec<FloatingIp>> {
    let rows: Vec<FipTuple> = sqlx::query_as(
        "SELECT f.id, f.address, f.port_id FROM floating_ips f JOIN ports p ON p.id = f.port_id \
         WHERE p.vpc_id = $1 ORDER BY f.id",
    )
    .bind(vpc.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(fip_row).collect()
}

pub async fn associate_floating_ip(conn: &mut AnyConnection, id: Uuid, port: Option<Uuid>) -> Result<()> {
    sqlx::query("UPDATE floating_ips SET port_id = $1 WHERE id = $2")
        .bind(port.map(|p| p.to_string()))
        .bind(id.to_string())
        .execute(conn)
        .await
        .map_err(|e| conflict_on_unique(e, "that port already has a floating IP".into()))?;
    Ok(())
}

pub async fn delete_floating_ip(conn: &mut AnyConnection, id: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM floating_ips WHERE id = $1")
        .bind(id.to_string())
        .execute(conn)
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// VPCs with at least one port bound to `node`.
pub async fn vpcs_on_node(conn: &mut AnyConnection, node: Uuid) -> Result<Vec<Uuid>> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT vpc_id FROM ports WHERE node_id = $1 ORDER BY vpc_id")
        .bind(node.to_string())
        .fetch_all(conn)
        .await?;
    ids.iter().map(|s| uuid_col(s)).collect()
}

/// Nodes holding a port of any VPC of `project`: whose documents a change in the project may
/// alter.
pub async fn nodes_of_project(conn: &mut AnyConnection, project: Uuid) -> Result<Vec<(Uuid, String)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT n.id, n.name FROM nodes n JOIN ports p ON p.node_id = n.id \
         JOIN vpcs v ON v.id = p.vpc_id WHERE v.project_id = $1 ORDER BY n.id",
    )
    .bind(project.to_string())
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(|(id, name)| Ok((uuid_col(&id)?, name))).collect()
}

/// Stores the latest data-plane report of a node; true when its tunnel address changed (the
/// documents of the other nodes name it).
pub async fn record_node_status(
    conn: &mut AnyConnection,
    node: Uuid,
    status_json: &str,
    tunnel_ip: Option<Ipv4Addr>,
    now: OffsetDateTime,
) -> Result<bool> {
    let before: Option<Option<String>> =
        sqlx::query_scalar("SELECT tunnel_ip FROM node_network_status WHERE node_id = $1")
            .bind(node.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let tunnel = tunnel_ip.map(|t| t.to_string());
    sqlx::query(
        "INSERT INTO node_network_status (node_id, status, tunnel_ip, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (node_id) DO UPDATE SET status = excluded.status, tunnel_ip = excluded.tunnel_ip, \
         updated_at = excluded.updated_at",
    )
    .bind(node.to_string())
    .bind(status_json)
    .bind(tunnel.clone())
    .bind(to_ms(now))
    .execute(conn)
    .await?;
    Ok(before.flatten() != tunnel)
}

/// The tunnel addresses nodes reported.
pub async fn tunnel_ips(conn: &mut AnyConnection) -> Result<BTreeMap<Uuid, Ipv4Addr>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT node_id, tunnel_ip FROM node_network_status WHERE tunnel_ip IS NOT NULL")
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|(n, ip)| Ok((uuid_col(&n)?, parse("tunnel_ip", &ip)?)))
        .collect()
}

/// The data-plane reports of the given nodes: `(node, status JSON, updated_at)`.
pub async fn node_statuses(conn: &mut AnyConnection, nodes: &[Uuid]) -> Result<Vec<(Uuid, String, OffsetDateTime)>> {
    let mut out = Vec::new();
    for n in nodes {
        let r: Option<(String, i64)> =
            sqlx::query_as("SELECT status, updated_at FROM node_network_status WHERE node_id = $1")
                .bind(n.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((s, t)) = r {
            out.push((*n, s, from_ms(t)));
        }
    }
    Ok(out)
}
