//! The protobuf messages of a TensorBoard event file, the fields this writer uses, written out as
//! `prost` structs: `Event` (`tensorflow/core/util/event.proto`), `Summary`, `SummaryMetadata`
//! (`tensorflow/core/framework/summary.proto`), `TensorProto` and `TensorShapeProto`
//! (`tensor.proto`, `tensor_shape.proto`). Field numbers and types are those of the `.proto`
//! files, so the bytes are what TensorBoard's own writer produces; fields left out are skipped
//! on decoding, as protobuf does with unknown fields.

/// One record of an event file (`tensorflow.Event`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The training step the event belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// The payload of an [`Event`] (the `what` oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of every file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Values logged at the event's step.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`: the values of one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// One value per tag.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: one tag's value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The series the value belongs to (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Which plugin reads the value (text summaries name `text`).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The value itself.
    #[prost(oneof = "Kind", tags = "2, 4, 8")]
    pub kind: Option<Kind>,
}

/// The value of a [`Value`] (the `value` oneof).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A scalar (TensorBoard's scalars dashboard).
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// An encoded image (the images dashboard).
    #[prost(message, tag = "4")]
    Image(Image),
    /// A tensor, read by the plugin its metadata names.
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `tensorflow.Summary.Image`: an encoded (PNG) image.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Rows.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Columns.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// Channels: 1 grey, 2 grey and alpha, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.SummaryMetadata`: which plugin owns a value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin and its settings.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// The plugin's name (`text`).
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own settings, serialised (empty: its defaults).
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.TensorProto`, for string tensors only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// The element type ([`DT_STRING`]).
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape (no dimensions: a scalar).
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The strings, one per element.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The dimensions, outermost first.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `tensorflow.TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Its size.
    #[prost(int64, tag = "1")]
    pub size: i64,
}

/// `tensorflow.DataType.DT_STRING`.
pub const DT_STRING: i32 = 7;
