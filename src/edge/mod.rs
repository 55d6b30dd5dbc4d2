//! IoT Edge, as IoT Hub and the Edge runtime read it (edge.md): deployment manifests (build
//! and validate), edgeHub routes, and target conditions.

pub mod assign;
pub mod condition;
pub mod manifest;
pub mod route;
