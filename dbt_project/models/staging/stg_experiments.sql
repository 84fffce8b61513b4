with

source as (

    select * from {{ source('raw', 'experiments') }}

),

renamed as (

    select {{ typed_raw_columns(source('raw', 'experiments'), 'experiments') }}
    from source

)

select * from renamed
