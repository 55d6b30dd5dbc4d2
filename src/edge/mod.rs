//! IoT Edge, as IoT Hub and the Edge runtime read it (edge.md): deployment manifests (build
//! and validate), edgeHub routes, the runtime's module twin documents, which deployments apply
//! to which device, and a device's state with its deployment. Target conditions are IoT Hub's
//! query language: `iothub::condition`.

pub mod agent;
pub mod assign;
pub mod image;
pub mod manifest;
pub mod route;
pub mod state;
