//! A stage's typed metrics struct to and from the engine's flat `name -> f64` map.
//!
//! Serialisation goes through `serde_json::Value` (JSON has no NaN: a non-finite
//! metric serialises as null and becomes NaN in the map, as the old untyped stages
//! stored it). Deserialisation reads the map directly, so NaN survives, a missing
//! metric is an error naming it, and `Option<f64>` fields read metrics that a stage
//! writes only sometimes.

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::Serialize;
use workspace::ExecError;

use cache::Metrics;

/// The flat map of `metrics`: one number per field (flattened maps included).
pub fn to_map(metrics: &impl Serialize) -> Result<Metrics, ExecError> {
    let value = serde_json::to_value(metrics).map_err(|error| ExecError::Failed(format!("metrics: {error}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(ExecError::Failed("metrics: not a struct of numbers".into()));
    };
    fields
        .into_iter()
        .map(|(name, value)| match value {
            serde_json::Value::Number(number) => {
                let number =
                    number.as_f64().ok_or_else(|| ExecError::Failed(format!("metric `{name}`: not an f64")))?;
                Ok((name, number))
            }
            serde_json::Value::Null => Ok((name, f64::NAN)),
            other => Err(ExecError::Failed(format!("metric `{name}` is {other}, not a number"))),
        })
        .collect()
}

/// The typed metrics read back from a flat map. Names the struct lacks are ignored
/// (unless it flattens a map, which collects them).
pub fn from_map<M: DeserializeOwned>(metrics: &Metrics) -> Result<M, String> {
    let entries = metrics.iter().map(|(name, value)| (name.as_str(), Number(*value)));
    M::deserialize(de::value::MapDeserializer::<_, de::value::Error>::new(entries)).map_err(|error| error.to_string())
}

/// One metric value as a deserializer: an `f64`, or `Some(f64)` for an `Option`.
#[derive(Clone, Copy)]
struct Number(f64);

impl<'de> IntoDeserializer<'de, de::value::Error> for Number {
    type Deserializer = Number;

    fn into_deserializer(self) -> Number {
        self
    }
}

impl<'de> de::Deserializer<'de> for Number {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_f64(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        loss: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maybe: Option<f64>,
        #[serde(flatten)]
        rest: BTreeMap<String, f64>,
    }

    #[test]
    fn round_trip_keeps_names_and_nan() {
        let sample = Sample { loss: f64::NAN, maybe: Some(2.5), rest: BTreeMap::from([("size_2_loss".into(), 0.5)]) };
        let map = to_map(&sample).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), ["loss", "maybe", "size_2_loss"]);
        let back: Sample = from_map(&map).unwrap();
        assert!(back.loss.is_nan());
        assert_eq!((back.maybe, back.rest), (Some(2.5), sample.rest));
    }

    #[test]
    fn missing_metric_is_an_error_and_optional_is_none() {
        let error = from_map::<Sample>(&Metrics::new()).unwrap_err();
        assert!(error.contains("missing field `loss`"), "{error}");
        let back: Sample = from_map(&Metrics::from([("loss".into(), 1.0)])).unwrap();
        assert_eq!(back.maybe, None);
    }
}
