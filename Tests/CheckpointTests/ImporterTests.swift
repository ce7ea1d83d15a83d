import Testing
@testable import Checkpoint
