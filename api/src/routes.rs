//! The REST API's routes: an HTTP request becomes a [`VmmAction`] (or a
//! 400/404/405), and the controller's answer becomes a response. Paths,
//! bodies and status codes follow Firecracker's API.

use crate::http::{HttpRequest, Method, Response, StatusCode};
use brique_vmm::config::{
    BootSourceConfig, DriveConfig, DriveUpdate, MachineConfig, MachineConfigUpdate,
    NetworkInterfaceConfig, NetworkInterfaceUpdate,
};
use brique_vmm::controller::{ControllerError, MetricsConfig, VmmAction, VmmData};
use brique_vmm::logger::LoggerConfig;
use brique_vmm::persist::{SnapshotCreateParams, SnapshotLoadParams};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Every route: path pattern and methods, for 405 answers, the OpenAPI
/// test and the docs. `{id}` matches one path segment.
pub const ROUTES: &[(&str, &[&str])] = &[
    ("/", &["GET"]),
    ("/version", &["GET"]),
    ("/machine-config", &["GET", "PUT", "PATCH"]),
    ("/boot-source", &["PUT"]),
    ("/drives/{id}", &["PUT", "PATCH"]),
    ("/network-interfaces/{id}", &["PUT", "PATCH"]),
    ("/entropy", &["PUT"]),
    ("/vsock", &["PUT"]),
    ("/actions", &["PUT"]),
    ("/vm", &["PATCH"]),
    ("/vm/config", &["GET"]),
    ("/logger", &["PUT"]),
    ("/metrics", &["PUT"]),
    ("/snapshot/create", &["PUT"]),
    ("/snapshot/load", &["PUT"]),
];

/// Firecracker endpoints brique does not implement (yet): answered 404
/// with a message that says so.
const NOT_IMPLEMENTED: &[&str] = &["balloon", "cpu-config", "hotplug", "mmds"];

/// A request that never reaches the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// 400, 404 or 405.
    pub status: StatusCode,
    /// The fault message.
    pub message: String,
    /// For 405: the methods the path has.
    pub allow: Option<String>,
}

impl RouteError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BadRequest,
            message: message.into(),
            allow: None,
        }
    }

    /// The response for this error.
    pub fn into_response(self) -> Response {
        let mut response = Response::fault(self.status, &self.message);
        response.allow = self.allow;
        response
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

#[derive(Debug, Deserialize)]
enum VmState {
    Paused,
    Resumed,
}

/// Turns a request into the action it asks for.
pub fn parse(request: &HttpRequest) -> Result<VmmAction, RouteError> {
    let segments: Vec<&str> = request.path.split('/').skip(1).collect();
    let method = request.method;
    let route = match segments.as_slice() {
        [""] => "/",
        ["version"] => "/version",
        ["machine-config"] => "/machine-config",
        ["boot-source"] => "/boot-source",
        ["drives", id] if !id.is_empty() => "/drives/{id}",
        ["network-interfaces", id] if !id.is_empty() => "/network-interfaces/{id}",
        ["entropy"] => "/entropy",
        ["vsock"] => "/vsock",
        ["actions"] => "/actions",
        ["vm"] => "/vm",
        ["vm", "config"] => "/vm/config",
        ["logger"] => "/logger",
        ["metrics"] => "/metrics",
        ["snapshot", "create"] => "/snapshot/create",
        ["snapshot", "load"] => "/snapshot/load",
        [first, ..] if NOT_IMPLEMENTED.contains(first) => {
            return Err(RouteError {
                status: StatusCode::NotFound,
                message: format!(
                    "{} is a Firecracker endpoint that brique does not implement yet",
                    request.path
                ),
                allow: None,
            })
        }
        _ => {
            return Err(RouteError {
                status: StatusCode::NotFound,
                message: format!("no such path: {}", request.path),
                allow: None,
            })
        }
    };
    let id = segments.get(1).copied().unwrap_or("");
    let action = match (route, method) {
        ("/", Method::Get) => VmmAction::GetInstanceInfo,
        ("/version", Method::Get) => VmmAction::GetVersion,
        ("/machine-config", Method::Get) => VmmAction::GetMachineConfig,
        ("/machine-config", Method::Put) => {
            VmmAction::PutMachineConfig(body::<MachineConfig>(request)?)
        }
        ("/machine-config", Method::Patch) => {
            let update = body::<MachineConfigUpdate>(request)?;
            if update == MachineConfigUpdate::default() {
                return Err(RouteError::bad_request(
                    "empty PATCH /machine-config: give at least one field",
                ));
            }
            VmmAction::PatchMachineConfig(update)
        }
        ("/boot-source", Method::Put) => {
            VmmAction::PutBootSource(body::<BootSourceConfig>(request)?)
        }
        ("/drives/{id}", Method::Put) => {
            let drive = body::<DriveConfig>(request)?;
            same_id("drive_id", id, &drive.drive_id)?;
            VmmAction::PutDrive(drive)
        }
        ("/drives/{id}", Method::Patch) => {
            let update = body::<DriveUpdate>(request)?;
            same_id("drive_id", id, &update.drive_id)?;
            VmmAction::PatchDrive(update)
        }
        ("/network-interfaces/{id}", Method::Put) => {
            let iface = body::<NetworkInterfaceConfig>(request)?;
            same_id("iface_id", id, &iface.iface_id)?;
            VmmAction::PutNetworkInterface(iface)
        }
        ("/network-interfaces/{id}", Method::Patch) => {
            let update = body::<NetworkInterfaceUpdate>(request)?;
            same_id("iface_id", id, &update.iface_id)?;
            VmmAction::PatchNetworkInterface(update)
        }
        ("/entropy", Method::Put) => VmmAction::PutEntropy(body(request)?),
        ("/vsock", Method::Put) => VmmAction::PutVsock(body(request)?),
        ("/actions", Method::Put) => match body::<ActionBody>(request)?.action_type {
            ActionType::InstanceStart => VmmAction::InstanceStart,
            ActionType::SendCtrlAltDel => VmmAction::SendCtrlAltDel,
            ActionType::FlushMetrics => VmmAction::FlushMetrics,
        },
        ("/vm", Method::Patch) => match body::<VmStateBody>(request)?.state {
            VmState::Paused => VmmAction::Pause,
            VmState::Resumed => VmmAction::Resume,
        },
        ("/vm/config", Method::Get) => VmmAction::GetFullConfig,
        ("/logger", Method::Put) => VmmAction::PutLogger(body::<LoggerConfig>(request)?),
        ("/metrics", Method::Put) => VmmAction::PutMetrics(body::<MetricsConfig>(request)?),
        ("/snapshot/create", Method::Put) => {
            VmmAction::CreateSnapshot(body::<SnapshotCreateParams>(request)?)
        }
        ("/snapshot/load", Method::Put) => {
            let params = body::<SnapshotLoadParams>(request)?;
            // Exactly one memory backend, checked before the VMM sees it.
            params.memory_file().map_err(RouteError::bad_request)?;
            VmmAction::LoadSnapshot(params)
        }
        (route, _) => {
            let allow = allowed_methods(route);
            return Err(RouteError {
                status: StatusCode::MethodNotAllowed,
                message: format!(
                    "{} is not allowed on {}; allowed: {allow}",
                    request.method_text, request.path
                ),
                allow: Some(allow),
            });
        }
    };
    Ok(action)
}

/// The methods `route` has, from [`ROUTES`], for the `Allow` header.
fn allowed_methods(route: &str) -> String {
    ROUTES
        .iter()
        .find(|(pattern, _)| *pattern == route)
        .map(|(_, methods)| methods.join(", "))
        .unwrap_or_default()
}

fn body<T: DeserializeOwned>(request: &HttpRequest) -> Result<T, RouteError> {
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return Err(RouteError::bad_request(format!(
            "{} {} needs a JSON body",
            request.method_text, request.path
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(&request.body)
        .map_err(|err| RouteError::bad_request(format!("invalid JSON body: {err}")))?;
    if !value.is_object() {
        return Err(RouteError::bad_request(
            "invalid JSON body: expected a JSON object",
        ));
    }
    serde_json::from_value(value)
        .map_err(|err| RouteError::bad_request(format!("invalid JSON body: {err}")))
}

fn same_id(field: &str, in_path: &str, in_body: &str) -> Result<(), RouteError> {
    if in_path == in_body {
        Ok(())
    } else {
        Err(RouteError::bad_request(format!(
            "{field} {in_body:?} in the body does not match {in_path:?} in the path"
        )))
    }
}

/// The response for the controller's answer.
pub fn respond(result: Result<VmmData, ControllerError>) -> Response {
    let json = |value: Result<String, serde_json::Error>| match value {
        Ok(json) => Response::json(json),
        Err(err) => Response::fault(StatusCode::InternalServerError, &err.to_string()),
    };
    match result {
        Ok(VmmData::Empty) => Response::no_content(),
        Ok(VmmData::InstanceInfo(info)) => json(serde_json::to_string(&info)),
        Ok(VmmData::Version(version)) => json(serde_json::to_string(&version)),
        Ok(VmmData::MachineConfig(config)) => json(serde_json::to_string(&config)),
        Ok(VmmData::FullConfig(config)) => json(serde_json::to_string(&config)),
        Err(ControllerError::VmmGone) => Response::fault(
            StatusCode::InternalServerError,
            &ControllerError::VmmGone.to_string(),
        ),
        Err(err) => Response::fault(StatusCode::BadRequest, &err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, path: &str, body: &str) -> HttpRequest {
        HttpRequest {
            method,
            method_text: format!("{method:?}").to_uppercase(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    fn ok(method: Method, path: &str, body: &str) -> VmmAction {
        parse(&request(method, path, body)).unwrap_or_else(|err| panic!("{path}: {err:?}"))
    }

    fn err(method: Method, path: &str, body: &str) -> RouteError {
        parse(&request(method, path, body)).unwrap_err()
    }

    #[test]
    fn every_route_and_method_maps_to_its_action() {
        use Method::*;
        assert_eq!(ok(Get, "/", ""), VmmAction::GetInstanceInfo);
        assert_eq!(ok(Get, "/version", ""), VmmAction::GetVersion);
        assert_eq!(ok(Get, "/machine-config", ""), VmmAction::GetMachineConfig);
        assert!(matches!(
            ok(
                Put,
                "/machine-config",
                r#"{"vcpu_count": 2, "mem_size_mib": 256}"#
            ),
            VmmAction::PutMachineConfig(MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 256,
                ..
            })
        ));
        assert!(matches!(
            ok(Patch, "/machine-config", r#"{"vcpu_count": 4}"#),
            VmmAction::PatchMachineConfig(MachineConfigUpdate {
                vcpu_count: Some(4),
                mem_size_mib: None,
                ..
            })
        ));
        assert!(matches!(
            ok(
                Put,
                "/boot-source",
                r#"{"kernel_image_path": "/k", "boot_args": "console=ttyS0"}"#
            ),
            VmmAction::PutBootSource(_)
        ));
        assert!(matches!(
            ok(
                Put,
                "/drives/root",
                r#"{"drive_id": "root", "path_on_host": "/r", "is_root_device": true}"#
            ),
            VmmAction::PutDrive(DriveConfig {
                is_root_device: true,
                ..
            })
        ));
        assert_eq!(
            ok(
                Patch,
                "/drives/data",
                r#"{"drive_id": "data", "path_on_host": "/new"}"#
            ),
            VmmAction::PatchDrive(DriveUpdate {
                drive_id: "data".into(),
                path_on_host: Some("/new".into()),
                rate_limiter: None,
            })
        );
        assert!(matches!(
            ok(
                Put,
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#
            ),
            VmmAction::PutNetworkInterface(_)
        ));
        assert!(matches!(
            ok(Patch, "/network-interfaces/eth0", r#"{"iface_id": "eth0"}"#),
            VmmAction::PatchNetworkInterface(_)
        ));
        assert_eq!(
            ok(Put, "/actions", r#"{"action_type": "InstanceStart"}"#),
            VmmAction::InstanceStart
        );
        assert_eq!(
            ok(Put, "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
            VmmAction::SendCtrlAltDel
        );
        assert_eq!(
            ok(Put, "/actions", r#"{"action_type": "FlushMetrics"}"#),
            VmmAction::FlushMetrics
        );
        assert_eq!(ok(Patch, "/vm", r#"{"state": "Paused"}"#), VmmAction::Pause);
        assert_eq!(
            ok(Patch, "/vm", r#"{"state": "Resumed"}"#),
            VmmAction::Resume
        );
        assert_eq!(ok(Get, "/vm/config", ""), VmmAction::GetFullConfig);
        assert!(matches!(
            ok(Put, "/logger", r#"{"level": "Debug"}"#),
            VmmAction::PutLogger(_)
        ));
        assert!(matches!(
            ok(Put, "/metrics", r#"{"metrics_path": "/m"}"#),
            VmmAction::PutMetrics(_)
        ));
        assert!(matches!(
            ok(
                Put,
                "/snapshot/create",
                r#"{"snapshot_path": "/s", "mem_file_path": "/m"}"#
            ),
            VmmAction::CreateSnapshot(_)
        ));
        assert!(matches!(
            ok(
                Put,
                "/snapshot/load",
                r#"{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#
            ),
            VmmAction::LoadSnapshot(_)
        ));
        // Two memory backends: refused before the VMM sees it.
        let both = err(
            Put,
            "/snapshot/load",
            r#"{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}"#,
        );
        assert_eq!(both.status, StatusCode::BadRequest);
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        use Method::*;
        for path in [
            "/nope",
            "/drives",
            "/drives/",
            "/drives/a/b",
            "/vm/config/x",
            "//",
        ] {
            assert_eq!(err(Get, path, "").status, StatusCode::NotFound, "{path}");
        }
        let balloon = err(Put, "/balloon", "{}");
        assert_eq!(balloon.status, StatusCode::NotFound);
        assert!(
            balloon.message.contains("does not implement"),
            "{}",
            balloon.message
        );
        assert_eq!(
            err(Put, "/snapshot/other", "{}").status,
            StatusCode::NotFound
        );
        assert_eq!(err(Get, "/snapshot/load", "").allow.as_deref(), Some("PUT"));
        let wrong = err(Get, "/actions", "");
        assert_eq!(wrong.status, StatusCode::MethodNotAllowed);
        assert_eq!(wrong.allow.as_deref(), Some("PUT"));
        assert_eq!(err(Other, "/", "").status, StatusCode::MethodNotAllowed);
        assert_eq!(
            err(Put, "/vm", r#"{"state": "Paused"}"#).allow.as_deref(),
            Some("PATCH")
        );
    }

    #[test]
    fn bad_bodies_are_400_with_the_reason() {
        use Method::*;
        let cases = [
            (Put, "/machine-config", "", "needs a JSON body"),
            (Put, "/machine-config", "{", "invalid JSON"),
            (
                Put,
                "/machine-config",
                r#"{"vcpu_count": "two", "mem_size_mib": 1}"#,
                "invalid type",
            ),
            (
                Put,
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 128, "x": 1}"#,
                "unknown field",
            ),
            (
                Put,
                "/machine-config",
                r#"{"vcpu_count": 300, "mem_size_mib": 128}"#,
                "invalid value",
            ),
            (Patch, "/machine-config", "{}", "at least one field"),
            (
                Put,
                "/actions",
                r#"{"action_type": "Explode"}"#,
                "unknown variant",
            ),
            (Patch, "/vm", r#"{"state": "Frozen"}"#, "unknown variant"),
            (
                Put,
                "/drives/a",
                r#"{"drive_id": "b", "path_on_host": "/r", "is_root_device": false}"#,
                "does not match",
            ),
            (
                Patch,
                "/network-interfaces/eth0",
                r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1}}}"#,
                "refill_time",
            ),
            (Put, "/logger", "[]", "JSON object"),
        ];
        for (method, path, body, needle) in cases {
            let error = err(method, path, body);
            assert_eq!(error.status, StatusCode::BadRequest, "{path} {body}");
            assert!(
                error.message.contains(needle),
                "{path} {body}: {}",
                error.message
            );
        }
    }

    #[test]
    fn routes_table_matches_the_router() {
        for (pattern, methods) in ROUTES {
            let path = pattern.replace("{id}", "x");
            for method in [Method::Get, Method::Put, Method::Patch] {
                let name = format!("{method:?}").to_uppercase();
                let result = parse(&request(method, &path, "{}"));
                let allowed = methods.contains(&name.as_str());
                let refused_405 =
                    matches!(&result, Err(e) if e.status == StatusCode::MethodNotAllowed);
                assert_eq!(!refused_405, allowed, "{name} {path}: {result:?}");
            }
        }
    }

    #[test]
    fn controller_answers_become_statuses() {
        assert_eq!(respond(Ok(VmmData::Empty)).status, StatusCode::NoContent);
        let refused = respond(Err(ControllerError::NotStarted("Pause")));
        assert_eq!(refused.status, StatusCode::BadRequest);
        assert!(refused.body.unwrap().contains("fault_message"));
        assert_eq!(
            respond(Err(ControllerError::VmmGone)).status,
            StatusCode::InternalServerError
        );
    }
}
