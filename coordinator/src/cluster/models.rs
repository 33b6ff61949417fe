//! The `ibench.v1.Models` service (ibench/v1/models.proto): a [`ModelPool`] served over gRPC, and
//! [`RemotePool`], the client that is a [`ModelPool`] again. `ibench coordinator` serves its
//! [`super::ClusterPool`] this way and `ibench compare --coordinator URL` evaluates through it, so
//! the evaluation driver is the same code in one process and against a cluster.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ibench_proto::v1 as pb;
use ibench_proto::ModelsClient;
use ibench_shared::{ChatMessage, FinishReason, GenerationParams, Role};
use tonic::{Code, Request, Response, Status};

use crate::eval::backend::{BoxFuture, ChoiceRequest, Slot, SlotsRequest};
use crate::eval::pool::{GenOutput, GenRequest, ModelPool, PoolError};

// ---- wire <-> domain ----------------------------------------------------------------------

fn role_to_wire(r: Role) -> String {
    r.as_str().to_string()
}

fn role_from_wire(s: &str) -> Result<Role, Status> {
    match s {
        "system" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        other => Err(Status::invalid_argument(format!(
            "message role '{other}': expected system, user or assistant"
        ))),
    }
}

fn messages_to_wire(m: &[ChatMessage]) -> Vec<pb::ChatMessage> {
    m.iter()
        .map(|m| pb::ChatMessage {
            role: role_to_wire(m.role),
            content: m.content.clone(),
        })
        .collect()
}

fn messages_from_wire(m: Vec<pb::ChatMessage>) -> Result<Vec<ChatMessage>, Status> {
    m.into_iter()
        .map(|m| {
            Ok(ChatMessage {
                role: role_from_wire(&m.role)?,
                content: m.content,
            })
        })
        .collect()
}

fn settings_to_wire(p: &GenerationParams) -> pb::GenerationSettings {
    pb::GenerationSettings {
        max_new_tokens: p.max_new_tokens.min(u32::MAX as usize) as u32,
        temperature: p.temperature,
        top_p: p.top_p,
        top_k: p.top_k.min(u32::MAX as usize) as u32,
        seed: p.seed,
        stop: p.stop.clone(),
        enable_thinking: p.enable_thinking,
    }
}

fn settings_from_wire(s: Option<pb::GenerationSettings>) -> Result<GenerationParams, Status> {
    let s = s.ok_or_else(|| Status::invalid_argument("a turn without generation settings"))?;
    let p = GenerationParams {
        max_new_tokens: s.max_new_tokens as usize,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k as usize,
        seed: s.seed,
        stop: s.stop,
        enable_thinking: s.enable_thinking,
    };
    p.validate()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(p)
}

fn finish_from_wire(s: &str) -> Result<FinishReason, PoolError> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        PoolError::Engine {
            model: String::new(),
            why: format!("the coordinator sent an unknown finish reason '{s}'"),
        }
    })
}

/// A pool error as a status: registry and load failures are FAILED_PRECONDITION (retrying does
/// not help), the rest INTERNAL.
fn pool_status(e: &PoolError) -> Status {
    match e {
        PoolError::Registry(_) => Status::not_found(e.to_string()),
        PoolError::Load { .. } => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// A status from the coordinator as a pool error. Not reaching the coordinator at all is a load
/// failure: the evaluation stops (and resumes later) instead of failing every conversation.
fn status_error(model: &str, s: &Status) -> PoolError {
    let why = s.message().to_string();
    match s.code() {
        Code::NotFound
        | Code::FailedPrecondition
        | Code::Unauthenticated
        | Code::PermissionDenied => PoolError::Load {
            model: model.into(),
            why,
        },
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => PoolError::Load {
            model: model.into(),
            why: format!("the coordinator is unreachable ({why}); resume the run when it is back"),
        },
        _ => PoolError::Engine {
            model: model.into(),
            why,
        },
    }
}

// ---- server -------------------------------------------------------------------------------

/// The Models service over any pool.
pub struct ModelsService {
    pool: Arc<dyn ModelPool>,
}

impl ModelsService {
    pub fn new(pool: Arc<dyn ModelPool>) -> Self {
        Self { pool }
    }
}

fn model_name(m: &str) -> Result<&str, Status> {
    if m.trim().is_empty() {
        return Err(Status::invalid_argument("no model named"));
    }
    Ok(m)
}

#[tonic::async_trait]
impl pb::models_server::Models for ModelsService {
    async fn describe(
        &self,
        req: Request<pb::ModelRef>,
    ) -> Result<Response<pb::DescribeResponse>, Status> {
        let m = req.into_inner().model;
        let identity = self
            .pool
            .identity(model_name(&m)?)
            .map_err(|e| pool_status(&e))?;
        Ok(Response::new(pb::DescribeResponse { identity }))
    }

    async fn load(&self, req: Request<pb::ModelRef>) -> Result<Response<pb::LoadResponse>, Status> {
        let m = req.into_inner().model;
        self.pool
            .load(model_name(&m)?)
            .await
            .map_err(|e| pool_status(&e))?;
        Ok(Response::new(pb::LoadResponse { stages: Vec::new() }))
    }

    async fn unload(
        &self,
        req: Request<pb::ModelRef>,
    ) -> Result<Response<pb::UnloadResponse>, Status> {
        let m = req.into_inner().model;
        self.pool
            .unload(model_name(&m)?)
            .await
            .map_err(|e| pool_status(&e))?;
        Ok(Response::new(pb::UnloadResponse { was_loaded: true }))
    }

    async fn generate(
        &self,
        req: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let r = req.into_inner();
        let model = model_name(&r.model)?.to_string();
        let mut reqs = Vec::with_capacity(r.turns.len());
        for t in r.turns {
            reqs.push(GenRequest {
                messages: messages_from_wire(t.messages)?,
                params: settings_from_wire(t.settings)?,
            });
        }
        let results = self
            .pool
            .generate(&model, reqs)
            .await
            .into_iter()
            .map(|r| pb::TurnResult {
                result: Some(match r {
                    Ok(o) => pb::turn_result::Result::Ok(pb::Generated {
                        text: o.text,
                        prompt_tokens: o.prompt_tokens as u32,
                        completion_tokens: o.completion_tokens as u32,
                        finish_reason: o.finish_reason.as_str().to_string(),
                    }),
                    Err(e) => pb::turn_result::Result::Failure(pb::Failure {
                        kind: match e {
                            PoolError::Registry(_) | PoolError::Load { .. } => {
                                pb::FailureKind::Load as i32
                            }
                            _ => pb::FailureKind::Engine as i32,
                        },
                        message: e.to_string(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::GenerateResponse { results }))
    }

    async fn choose(
        &self,
        req: Request<pb::ChooseRequest>,
    ) -> Result<Response<pb::ChooseResponse>, Status> {
        let r = req.into_inner();
        let model = model_name(&r.model)?.to_string();
        let mut reqs = Vec::with_capacity(r.queries.len());
        for q in r.queries {
            reqs.push(ChoiceRequest {
                messages: messages_from_wire(q.messages)?,
                prefix: q.prefix,
                choices: q.choices,
            });
        }
        let out = self
            .pool
            .choose(&model, reqs)
            .await
            .map_err(|e| pool_status(&e))?;
        Ok(Response::new(pb::ChooseResponse {
            results: out
                .into_iter()
                .map(|logprobs| pb::ChoiceLogprobs { logprobs })
                .collect(),
        }))
    }

    async fn choose_slots(
        &self,
        req: Request<pb::ChooseSlotsRequest>,
    ) -> Result<Response<pb::ChooseSlotsResponse>, Status> {
        let r = req.into_inner();
        let model = model_name(&r.model)?.to_string();
        let mut reqs = Vec::with_capacity(r.queries.len());
        for q in r.queries {
            reqs.push(SlotsRequest {
                messages: messages_from_wire(q.messages)?,
                slots: q
                    .slots
                    .into_iter()
                    .map(|s| Slot {
                        prefix: s.prefix,
                        choices: s.choices,
                        fill: s.fill,
                    })
                    .collect(),
            });
        }
        let out = self
            .pool
            .choose_slots(&model, reqs)
            .await
            .map_err(|e| pool_status(&e))?;
        Ok(Response::new(pb::ChooseSlotsResponse {
            results: out
                .into_iter()
                .map(|slots| pb::SlotsLogprobs {
                    slots: slots
                        .into_iter()
                        .map(|logprobs| pb::ChoiceLogprobs { logprobs })
                        .collect(),
                })
                .collect(),
        }))
    }
}

// ---- client -------------------------------------------------------------------------------

/// The models of a remote coordinator as a [`ModelPool`].
pub struct RemotePool {
    client: ModelsClient,
    url: String,
    identities: Mutex<HashMap<String, String>>,
}

impl RemotePool {
    pub fn new(client: ModelsClient, url: &str) -> Self {
        Self {
            client,
            url: url.to_string(),
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// Asks the coordinator for the identity of every model the run will use (the store keys
    /// need them before the first call); an unknown name fails here, before any work.
    pub async fn describe(&self, models: &[String]) -> Result<(), PoolError> {
        for m in models {
            let r = self
                .client
                .clone()
                .describe(pb::ModelRef { model: m.clone() })
                .await
                .map_err(|s| match status_error(m, &s) {
                    PoolError::Load { why, .. } => PoolError::Load {
                        model: m.clone(),
                        why: format!("asking the coordinator at {}: {why}", self.url),
                    },
                    e => e,
                })?;
            self.identities
                .lock()
                .expect("identities lock")
                .insert(m.clone(), r.into_inner().identity);
        }
        Ok(())
    }
}

impl ModelPool for RemotePool {
    fn identity(&self, model: &str) -> Result<String, PoolError> {
        self.identities
            .lock()
            .expect("identities lock")
            .get(model)
            .cloned()
            .ok_or_else(|| PoolError::Load {
                model: model.into(),
                why: "not described by the coordinator (RemotePool::describe first)".into(),
            })
    }

    fn load(&self, model: &str) -> BoxFuture<'_, Result<(), PoolError>> {
        let model = model.to_string();
        Box::pin(async move {
            self.client
                .clone()
                .load(pb::ModelRef {
                    model: model.clone(),
                })
                .await
                .map_err(|s| status_error(&model, &s))?;
            Ok(())
        })
    }

    fn unload(&self, model: &str) -> BoxFuture<'_, Result<(), PoolError>> {
        let model = model.to_string();
        Box::pin(async move {
            self.client
                .clone()
                .unload(pb::ModelRef {
                    model: model.clone(),
                })
                .await
                .map_err(|s| status_error(&model, &s))?;
            Ok(())
        })
    }

    fn generate(
        &self,
        model: &str,
        reqs: Vec<GenRequest>,
    ) -> BoxFuture<'_, Vec<Result<GenOutput, PoolError>>> {
        let model = model.to_string();
        Box::pin(async move {
            let n = reqs.len();
            let fail = |e: PoolError| (0..n).map(|_| Err(e.clone())).collect::<Vec<_>>();
            let msg = pb::GenerateRequest {
                model: model.clone(),
                turns: reqs
                    .iter()
                    .map(|r| pb::Turn {
                        messages: messages_to_wire(&r.messages),
                        settings: Some(settings_to_wire(&r.params)),
                    })
                    .collect(),
            };
            let resp = match self.client.clone().generate(msg).await {
                Ok(r) => r.into_inner(),
                Err(s) => return fail(status_error(&model, &s)),
            };
            if resp.results.len() != n {
                return fail(PoolError::Engine {
                    model: model.clone(),
                    why: format!(
                        "the coordinator answered {} of {n} turns",
                        resp.results.len()
                    ),
                });
            }
            resp.results
                .into_iter()
                .map(|r| match r.result {
                    Some(pb::turn_result::Result::Ok(g)) => Ok(GenOutput {
                        text: g.text,
                        prompt_tokens: g.prompt_tokens as usize,
                        completion_tokens: g.completion_tokens as usize,
                        finish_reason: finish_from_wire(&g.finish_reason).map_err(|e| match e {
                            PoolError::Engine { why, .. } => PoolError::Engine {
                                model: model.clone(),
                                why,
                            },
                            e => e,
                        })?,
                    }),
                    Some(pb::turn_result::Result::Failure(f)) => {
                        Err(if f.kind == pb::FailureKind::Load as i32 {
                            PoolError::Load {
                                model: model.clone(),
                                why: f.message,
                            }
                        } else {
                            PoolError::Engine {
                                model: model.clone(),
                                why: f.message,
                            }
                        })
                    }
                    None => Err(PoolError::Engine {
                        model: model.clone(),
                        why: "the coordinator sent an empty turn result".into(),
                    }),
                })
                .collect()
        })
    }

    fn choose_slots(
        &self,
        model: &str,
        reqs: Vec<SlotsRequest>,
    ) -> BoxFuture<'_, Result<Vec<Vec<Vec<f32>>>, PoolError>> {
        let model = model.to_string();
        Box::pin(async move {
            let shape: Vec<Vec<usize>> = reqs
                .iter()
                .map(|r| r.slots.iter().map(|s| s.choices.len()).collect())
                .collect();
            let msg = pb::ChooseSlotsRequest {
                model: model.clone(),
                queries: reqs
                    .into_iter()
                    .map(|r| pb::SlotsQuery {
                        messages: messages_to_wire(&r.messages),
                        slots: r
                            .slots
                            .into_iter()
                            .map(|s| pb::Slot {
                                prefix: s.prefix,
                                choices: s.choices,
                                fill: s.fill,
                            })
                            .collect(),
                    })
                    .collect(),
            };
            let resp = self
                .client
                .clone()
                .choose_slots(msg)
                .await
                .map_err(|s| status_error(&model, &s))?
                .into_inner();
            let got: Vec<Vec<Vec<f32>>> = resp
                .results
                .into_iter()
                .map(|r| r.slots.into_iter().map(|s| s.logprobs).collect())
                .collect();
            let got_shape: Vec<Vec<usize>> = got
                .iter()
                .map(|r| r.iter().map(|s| s.len()).collect())
                .collect();
            if got_shape != shape {
                return Err(PoolError::Engine {
                    model,
                    why: "the coordinator's slot log-probabilities do not match the queries".into(),
                });
            }
            Ok(got)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_are_validated() {
        let p = GenerationParams {
            max_new_tokens: 77,
            temperature: 0.7,
            top_p: 0.5,
            top_k: 3,
            seed: 9,
            stop: vec!["\n\n".into()],
            enable_thinking: true,
        };
        assert_eq!(settings_from_wire(Some(settings_to_wire(&p))).unwrap(), p);
        let mut bad = settings_to_wire(&p);
        bad.top_p = 1.5;
        assert_eq!(
            settings_from_wire(Some(bad)).unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(settings_from_wire(None).is_err());
    }

    #[test]
    fn roles_and_finish_reasons_cross_the_wire() {
        let m = vec![
            ChatMessage::system("s"),
            ChatMessage::user("u"),
            ChatMessage::assistant("a"),
        ];
        assert_eq!(messages_from_wire(messages_to_wire(&m)).unwrap(), m);
        assert!(messages_from_wire(vec![pb::ChatMessage {
            role: "tool".into(),
            content: String::new()
        }])
        .is_err());
        for f in [
            FinishReason::Eos,
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ContextFull,
        ] {
            assert_eq!(finish_from_wire(f.as_str()).unwrap(), f);
        }
        assert!(finish_from_wire("tired").is_err());
    }

    #[test]
    fn an_unreachable_coordinator_stops_the_run_instead_of_failing_turns() {
        assert!(matches!(
            status_error("m", &Status::unavailable("connection refused")),
            PoolError::Load { .. }
        ));
        assert!(matches!(
            status_error("m", &Status::internal("boom")),
            PoolError::Engine { .. }
        ));
    }
}
